"""Does a video model use time? Shuffle test, confidence gap, order probe, GradCAM (paper Sec. 3.2)."""
