"""timematters: TIME (Time Is MattEr, ICML 2022) temporal self-supervision for video transformers."""

__version__ = "0.1.0"
