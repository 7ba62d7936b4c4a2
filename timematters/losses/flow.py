"""Token flow direction: attention from frame j+1's tokens to frame j's predicts, per token, one of
9 Farnebäck direction classes (Eq. 9-13)."""

from __future__ import annotations

import torch
from torch import nn

from timematters.backbones.layers import attention
from timematters.flow.labels import NUM_FLOW_CLASSES
from timematters.losses.inputs import LossInputs
from timematters.losses.mixing import mixed_cross_entropy


class FlowLoss(nn.Module):
    name = "flow"
    requires = frozenset({"flow_labels"})  # batch["flow_labels"] [B, T-1, S]

    def __init__(self, embed_dim: int, smoothing: float = 0.2):
        super().__init__()
        # Released names: single-head cross-attention at full width, then Linear -> LayerNorm -> Linear.
        self.mlp_q = nn.Linear(embed_dim, embed_dim)
        # No key bias: it adds the same logit to every key, softmax cancels it, its gradient is
        # zero and Adam would only random-walk it on rounding noise.
        self.mlp_k = nn.Linear(embed_dim, embed_dim, bias=False)
        self.mlp_v = nn.Linear(embed_dim, embed_dim)
        self.mlp_proj = nn.Linear(embed_dim, embed_dim)
        self.mlp_norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.flow_head = nn.Linear(embed_dim, NUM_FLOW_CLASSES)
        self.smoothing = smoothing

    def predict(self, patches: torch.Tensor) -> torch.Tensor:
        """[B, T, S, D] final patch tokens -> [B, T-1, S, 9] direction logits for every pair (j, j+1)."""
        query = self.mlp_q(patches[:, 1:])  # frame j+1 asks...
        key = self.mlp_k(patches[:, :-1])  # ...which of frame j's tokens it came from
        value = self.mlp_v(patches[:, :-1])
        # Softmax over frame j's S tokens, scale D^-0.5, no residual.
        x = attention(query, key, value)
        return self.flow_head(self.mlp_norm(self.mlp_proj(x)))

    def forward(self, inputs: LossInputs) -> dict[str, torch.Tensor]:
        labels = inputs.batch.get("flow_labels")
        if labels is None:
            raise ValueError("the flow loss needs batch['flow_labels'] [B, T-1, S]")
        logits = self.predict(inputs.tokens.patches)
        if labels.shape != logits.shape[:3]:
            raise ValueError(
                f"flow_labels are {tuple(labels.shape)} but the tokens give "
                f"{tuple(logits.shape[:3])} [B, token frame pairs, patches]: label the clips the "
                "model sees at its patch size, every frame_step-th frame for tubelets "
                "(FlowLabeller(patch_size, frame_step=frames // token frames)); a model whose "
                "patch_size is not the pixels a grid cell spans (a 3-D CNN: its total stride) "
                "has the wrong labels; without the flow loss: loss.flow.weight=0"
            )
        # Named here rather than as cross-entropy's index error; on the CPU only, as for the
        # task labels, so that a GPU step does not wait for the device.
        if labels.device.type == "cpu" and not torch.compiler.is_compiling():
            # -100 is cross-entropy's ignore_index: a token someone left unlabelled.
            valid = (labels == -100) | ((labels >= 0) & (labels < NUM_FLOW_CLASSES))
            if not bool(valid.all()):
                bad = int(labels[~valid][0])
                raise ValueError(
                    f"flow label {bad}: the direction classes are 0 to {NUM_FLOW_CLASSES - 1} "
                    "(0 still, 1 to 8 the angles)"
                )
        mix = inputs.batch.get("mix")
        if mix is not None and mix.partner_tokens is not None:  # CutMix: the box is the partner's
            if mix.partner_tokens.numel() != labels.shape[-1]:
                raise ValueError(
                    f"the CutMix box was cut on a grid of {mix.partner_tokens.numel()} patches but "
                    f"the flow labels have {labels.shape[-1]}: mix at the model's patch size"
                )
            labels, mix = torch.where(mix.partner_tokens, mix.partner(labels), labels), None
        loss = mixed_cross_entropy(logits, labels, mix, smoothing=self.smoothing)
        return {"flow_loss": loss}
