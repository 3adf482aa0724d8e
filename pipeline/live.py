"""Running the model live on a prompt, with interventions: the backend of the live prompt tab.

Interventions are plain data (`Intervention`: what, where, how much), so that a set can be saved,
put in a URL and replayed; each becomes one forward hook for the duration of one call:
- `zero` / `mean` ablation of an attention head (its `hook_z` slice set to 0, or to `vector`, a
  mean given by the caller, e.g. over the prompt's positions) or of an MLP neuron (its
  `mlp.hook_post` set to 0 or to `value`, e.g. the store's `neurons.mean`);
- `steer`: `value` x a vector (`vector`) added to the residual stream entering block `layer`
  (`hook_resid_pre`) at every position: a hook, never a change to the weights;
- `patch` (activation patching) is not an `Intervention` but `LiveModel.patch_grid`: the residual
  stream (or a head's output) of one prompt written into a run on another, one (layer, position)
  at a time, many at once in one batched forward.

Hooks live on the shared model: two threads using one bridge see each other's hooks (measured:
14-81% of plain runs came back ablated). Every model call here holds `LiveModel.lock`, so a call
runs alone on the model and leaves no hook behind; a second session waits for at most one call.

Generation is a plain greedy loop over full forwards (no KV cache): `bridge.generate` with its
cache is wrong under transformers 5 (the bridge ignores the cache it is handed), and a loop is
what lets every step carry the interventions. The prompt starts with the model's document
separator (`LoadedModel.bos_token_id`, `<|endoftext|>` for smollm2 and GPT-2), as the store's
windows do; the continuation depends on that choice.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from pipeline import hooks

KINDS = ("zero", "mean", "steer")
COMPONENTS = ("head", "neuron", "resid")
MAX_PROMPT_TOKENS = 256
MAX_NEW_TOKENS = 64


class LiveError(ValueError):
    """A request the live model cannot run; str() is one line for the user."""


@dataclass(frozen=True)
class Intervention:
    kind: str  # 'zero', 'mean' (ablations) or 'steer'
    component: str  # 'head', 'neuron' (ablations) or 'resid' (steering)
    layer: int
    index: int | None = None  # the head or neuron; None for the residual stream
    value: float = 0.0  # the ablation's value, or the steering scale
    vector: tuple[float, ...] | None = None  # the steering direction [d_model]

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @staticmethod
    def from_dict(d: dict) -> Intervention:
        vector = d.get("vector")
        return Intervention(kind=str(d["kind"]), component=str(d["component"]), layer=int(d["layer"]),
                            index=None if d.get("index") is None else int(d["index"]),
                            value=float(d.get("value", 0.0)),
                            vector=None if vector is None else tuple(map(float, vector)))

    def label(self) -> str:
        """A short description, e.g. 'zero L3H2', 'mean L5/N17 = 0.12', 'steer L4 x 2.0'."""
        if self.kind == "steer":
            return f"steer L{self.layer} x {self.value:g}"
        where = f"L{self.layer}H{self.index}" if self.component == "head" else f"L{self.layer}/N{self.index}"
        return f"{self.kind} {where}" + (f" = {self.value:.3g}" if self.kind == "mean" else "")


@dataclass
class LiveResult:
    token_ids: list[int]  # the prompt, BOS first
    logits: Tensor  # [pos vocab] float32
    cache: dict[str, Tensor]  # hook name -> [pos ...] of the hooks asked for


class LiveModel:
    """One loaded model (`pipeline.models.LoadedModel`) shared by the sessions of a server."""

    def __init__(self, model):
        self.model = model
        self.lock = threading.Lock()
        self.n_ctx = int(model.facts.get("n_ctx") or 1024)

    # --- inputs ----------------------------------------------------------------------------

    def encode(self, prompt: str, max_tokens: int = MAX_PROMPT_TOKENS) -> tuple[list[int], bool]:
        """(BOS + the prompt's token ids, whether it was cut to `max_tokens`)."""
        ids = self.model.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        cap = min(max_tokens, self.n_ctx) - 1
        return [self.model.bos_token_id, *ids[:cap]], len(ids) > cap

    def check(self, interventions: Iterable[Intervention]) -> None:
        m = self.model
        for iv in interventions:
            if iv.kind not in KINDS or iv.component not in COMPONENTS:
                raise LiveError(f"unknown intervention {iv.kind!r} on {iv.component!r}")
            if not 0 <= iv.layer < m.n_layers:
                raise LiveError(f"layer {iv.layer} is outside 0-{m.n_layers - 1}")
            size = {"head": m.n_heads, "neuron": m.d_mlp}.get(iv.component)
            if size is not None and (iv.index is None or not 0 <= iv.index < size):
                raise LiveError(f"{iv.component} {iv.index} is outside 0-{size - 1}")
            if iv.kind == "steer" and (iv.component != "resid" or iv.vector is None or len(iv.vector) != m.d_model):
                raise LiveError(f"a steering vector must be a residual-stream vector of {m.d_model} numbers")
            if iv.kind != "steer" and iv.component == "resid":
                raise LiveError("the residual stream is steered, not ablated")
            d_head = m.d_model // m.n_heads
            if iv.component == "head" and iv.vector is not None and len(iv.vector) != d_head:
                raise LiveError(f"a head's mean output (hook_z) has {d_head} numbers")

    # --- hooks -----------------------------------------------------------------------------

    def _hook(self, iv: Intervention, device) -> tuple[str, object]:
        if iv.component == "head":
            value = iv.value if iv.vector is None else torch.tensor(iv.vector, dtype=torch.float32, device=device)

            def ablate_head(z: Tensor, hook=None) -> Tensor:
                z = z.clone()
                z[:, :, iv.index, :] = value if isinstance(value, float) else value.to(z.dtype)
                return z
            return hooks.attn_z(iv.layer), ablate_head
        if iv.component == "neuron":
            def ablate_neuron(acts: Tensor, hook=None) -> Tensor:
                acts = acts.clone()
                acts[..., iv.index] = iv.value
                return acts
            return hooks.mlp_post(iv.layer), ablate_neuron
        vector = torch.tensor(iv.vector, dtype=torch.float32, device=device)

        def steer(resid: Tensor, hook=None) -> Tensor:
            return resid + (iv.value * vector).to(resid.dtype)
        return hooks.resid_pre(iv.layer), steer

    def _forward(self, ids: Tensor, fwd_hooks: list) -> Tensor:
        """Logits [batch pos vocab] float32 of `ids [batch pos]` with `fwd_hooks`; the caller holds the lock."""
        with self.model.bridge.hooks(fwd_hooks=fwd_hooks):
            return self.model.bridge(ids).float()

    def _last_logits(self, ids: Tensor, fwd_hooks: list) -> Tensor:
        """Logits `[batch vocab]` at the last position only: the forward stops after the last block
        and only that position is decoded (through the final norm and unembedding, as the lens does)."""
        from pipeline.harvest import run_through
        from pipeline.stats.lens_maths import Unembed

        if getattr(self, "_unembed", None) is None:
            self._unembed = Unembed.of(self.model)
        got: dict[str, Tensor] = {}
        point = hooks.point("resid_post", self.model.n_layers - 1)

        def keep(t: Tensor, hook=None) -> None:
            got["last"] = t[:, -1].detach().float()

        with self.lock:
            run_through(self.model, ids, [*fwd_hooks, (point.name, keep)], point)
        return self._unembed.logits(got["last"])

    # --- calls -----------------------------------------------------------------------------

    @torch.no_grad()
    def run(self, token_ids: Sequence[int], interventions: Sequence[Intervention] = (),
            capture: Sequence[str] = ()) -> LiveResult:
        """One forward of the prompt with the interventions; `capture` names hooks to keep."""
        self.check(interventions)
        device = self.model.device
        ids = torch.tensor([list(token_ids)], dtype=torch.long, device=device)
        cache: dict[str, Tensor] = {}

        def keep(name: str):
            def fn(t: Tensor, hook=None) -> None:
                cache[name] = t.detach()[0].float().clone()
            return fn

        fwd = [self._hook(iv, device) for iv in interventions] + [(name, keep(name)) for name in capture]
        with self.lock:
            logits = self._forward(ids, fwd)[0]
        return LiveResult(list(token_ids), logits, cache)

    @torch.no_grad()
    def generate(self, token_ids: Sequence[int], n_new: int, interventions: Sequence[Intervention] = ()) -> list[int]:
        """Greedy continuation (`n_new` tokens, at most MAX_NEW_TOKENS and the context) of the prompt,
        every step a full forward with the interventions (module docstring)."""
        self.check(interventions)
        n_new = max(0, min(n_new, MAX_NEW_TOKENS, self.n_ctx - len(token_ids)))
        device = self.model.device
        ids = torch.tensor([list(token_ids)], dtype=torch.long, device=device)
        out: list[int] = []
        for _ in range(n_new):
            with self.lock:  # one step per hold: another session waits for one forward at most
                logits = self._forward(ids, [self._hook(iv, device) for iv in interventions])
            nxt = int(logits[0, -1].argmax())
            out.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]], device=device)], dim=1)
        return out

    @torch.no_grad()
    def patch_grid(self, clean: Sequence[int], corrupt: Sequence[int], good: int, bad: int,
                   layers: Sequence[int] | None = None, positions: Sequence[int] | None = None,
                   progress=None) -> Tensor:
        """Residual-stream activation patching, clean -> corrupted: for each layer l and position p,
        the corrupted prompt is run with its `hook_resid_pre` of block l at position p replaced by the
        clean prompt's, and the result is logit[good] - logit[bad] at the last position. Returns
        `[layers positions]`. One batched forward per layer: row j patches position j, and the
        unembedding sees only the last position. The prompts must have the same length."""
        if len(clean) != len(corrupt):
            raise LiveError(f"the two prompts must have as many tokens ({len(clean)} and {len(corrupt)})")
        m = self.model
        layers = list(range(m.n_layers)) if layers is None else list(layers)
        positions = list(range(len(clean))) if positions is None else list(positions)
        device = m.device
        names = [hooks.resid_pre(layer) for layer in layers]
        clean_run = self.run(clean, capture=names)
        corrupt_ids = torch.tensor([list(corrupt)] * len(positions), dtype=torch.long, device=device)
        rows = torch.arange(len(positions), device=device)
        cols = torch.tensor(positions, dtype=torch.long, device=device)
        out = torch.empty(len(layers), len(positions))
        for i, name in enumerate(names):
            source = clean_run.cache[name][cols]  # [n_positions d_model]

            def patch(resid: Tensor, hook=None, source=source) -> Tensor:
                resid = resid.clone()
                resid[rows, cols] = source.to(resid.dtype)
                return resid

            last = self._last_logits(corrupt_ids, [(name, patch)])
            out[i] = (last[:, good] - last[:, bad]).cpu()
            if progress is not None:
                progress(i + 1, len(layers))
        return out

    @torch.no_grad()
    def patch_heads(self, clean: Sequence[int], corrupt: Sequence[int], good: int, bad: int,
                    progress=None) -> Tensor:
        """Head activation patching, clean -> corrupted: for each layer l and head h, the corrupted
        prompt is run with head h's output (`hook_z`, every position) replaced by the clean prompt's;
        the result is logit[good] - logit[bad] at the last position. `[layers heads]`, one batched
        forward per layer (row h patches head h)."""
        if len(clean) != len(corrupt):
            raise LiveError(f"the two prompts must have as many tokens ({len(clean)} and {len(corrupt)})")
        m = self.model
        names = [hooks.attn_z(layer) for layer in range(m.n_layers)]
        clean_run = self.run(clean, capture=names)
        device = m.device
        corrupt_ids = torch.tensor([list(corrupt)] * m.n_heads, dtype=torch.long, device=device)
        heads = torch.arange(m.n_heads, device=device)
        out = torch.empty(m.n_layers, m.n_heads)
        for layer, name in enumerate(names):
            source = clean_run.cache[name]  # [pos head d_head]

            def patch(z: Tensor, hook=None, source=source) -> Tensor:
                z = z.clone()
                z[heads, :, heads] = source.transpose(0, 1).to(z.dtype)  # row h: head h at every position
                return z

            last = self._last_logits(corrupt_ids, [(name, patch)])
            out[layer] = (last[:, good] - last[:, bad]).cpu()
            if progress is not None:
                progress(layer + 1, m.n_layers)
        return out
