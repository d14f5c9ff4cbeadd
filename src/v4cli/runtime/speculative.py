"""MTP speculative decoding: the `mtp.0` block drafts the next token, the main model verifies it.

One step for a sequence runs its pending tokens plus the draft through the main model at once. The
draft is accepted when the main model would have chosen it (greedy) or, when sampling, with the
probability the main model gives it (exact speculative sampling for a deterministic draft). Either
way the output has the distribution of plain decoding; with greedy it is the same tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .cache import SeqState
from .model import Transformer
from .sampler import SamplingParams, TokenLogprob, filtered_logits, greedy, sample, token_logprob


@dataclass
class SpecStats:
    drafted: int = 0
    accepted: int = 0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0


def verify(logits: torch.Tensor, draft: Sequence[int], p: SamplingParams, history: list[int],
           generator: torch.Generator | None) -> tuple[list[int], list[TokenLogprob | None], int]:
    """Decide tokens from verification logits [len(draft)+1, vocab] (row i predicts the token after
    draft[i-1]). Returns (new tokens, their logprob info, number of draft tokens accepted)."""
    out: list[int] = []
    infos: list[TokenLogprob | None] = []
    for i, d in enumerate(draft):
        row = logits[i]
        for proc in p.logits_processors:
            row = proc(history + out, row)
        if p.temperature == 0:
            ok = greedy(row) == d
        else:
            probs = filtered_logits(row, p).softmax(-1)
            ok = bool(torch.rand((), generator=generator) < probs[d])
        if ok:
            out.append(d)
            infos.append(token_logprob(row, d, p.logprobs))
            continue
        if p.temperature == 0:
            token = greedy(row)
        else:  # the residual distribution: the target's with the rejected draft removed
            probs[d] = 0.0
            token = int(torch.multinomial(probs / probs.sum(), 1, generator=generator))
        out.append(token)
        infos.append(token_logprob(row, token, p.logprobs))
        return out, infos, i
    token, info = sample(logits[len(draft)], p, history + out, generator)
    return out + [token], infos + [info], len(draft)



class MtpDrafter:
    """Keeps the MTP block in step with the main model and proposes one draft token per sequence.

    The MTP block at position i reads the main model's final streams at i and the token at i+1, and
    predicts the token at i+2. After each forward step the engine hands over, per sequence, the
    streams of the positions it knows to be final and the tokens that follow them.
    """

    def __init__(self, model: Transformer) -> None:
        self.model = model
        self.stats = SpecStats()

    def catch_up(self, items: Sequence[tuple[SeqState, int, torch.Tensor, Sequence[int]]]) -> list[int | None]:
        """items: (state, start, streams [L, n, D] of positions start.., tokens at positions start..).

        Runs the MTP block over every position from `state.mtp_pos` whose streams and next token are
        known, and returns the draft for each sequence (None when nothing could be run for it).
        """
        hs, nxt, states, lengths, owners = [], [], [], [], []
        for k, (st, start, h, seq) in enumerate(items):
            first = st.mtp_pos - start
            last = min(h.shape[0], len(seq) - 1)  # position start+i needs its streams and token i+1
            if first < 0 or first >= last:
                continue
            hs.append(h[first:last])
            nxt.extend(seq[first + 1 : last + 1])
            states.append(st)
            lengths.append(last - first)
            owners.append(k)
        drafts: list[int | None] = [None] * len(items)
        if not states:
            return drafts
        device = hs[0].device
        logits, _ = self.model.mtp_forward(torch.cat(hs), torch.tensor(nxt, device=device), states, lengths)
        ends = torch.tensor(lengths, device=device).cumsum(0) - 1
        for k, tok in zip(owners, logits[ends].argmax(-1).tolist(), strict=True):
            drafts[k] = tok
        return drafts
