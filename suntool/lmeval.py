"""The lm-eval model `suntool`: evaluates a split artifact the way it really runs.

`SuntoolLM` subclasses lm-eval's `HFLM`, so tokenization, truncation, batching, chat
templates and request caching are exactly those of lm-eval's own `hf` model; only the
model calls are replaced:

- loglikelihood: the prefill half builds the context's K/V (`suntool.handoff.prefill`),
  the decode half scores the continuation reading that cache
  (`suntool.handoff.continuation_logits`);
- loglikelihood_rolling: the same, over lm-eval's rolling windows;
- generate_until: prefill half → K/V handoff → decode half (`suntool.handoff.decode`).

Model args (`--model_args`): `artifact=PATH` (an artifact dir, a plain HF checkpoint or a
built-in name), `dtype`, `batch_size`, `max_length`, `allow_mismatch`, `device`, `engine`.

`engine=true` (`suntool eval --engine`) runs generate_until on suntool's serving engine instead
(`suntool.serve.engine`: every request submitted at once, continuous batching, the compact forward
over the paged KV pool; the same prefill half → K/V → decode half), with lm-eval's own
tokenization, truncation, stop sequences and post-processing. Greedy outputs equal the reference
path's (tested) up to float rounding; it loads a second copy of the artifact for the engine.

Progress: set `on_requests(kind, done, total, tokens)` on the model (kind "loglikelihood" or
"generate_until"); it is called after every batch with the requests done so far in the current call
and the tokens that batch processed (`suntool eval` draws plain progress lines from it).
"""

from __future__ import annotations

import logging

import torch
from lm_eval.models.huggingface import HFLM

from suntool.artifact import LoadedArtifact, load_artifact
from suntool.handoff import SamplingConfig, continuation_logits, decode, prefill


def _as_bool(value) -> bool:
    return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")


class SuntoolLM(HFLM):
    """lm-eval model over a suntool artifact (prefill half → K/V → decode half)."""

    on_requests = None  # optional progress callback (kind, done, total, tokens); see the module docstring
    _generated = (0, 0)  # (done, total) of the current generate_until call

    def __init__(
        self,
        artifact: str | LoadedArtifact | None = None,
        pretrained: str | None = None,
        dtype: str | None = "float32",
        batch_size: int | str = 8,
        max_length: int | None = None,
        device: str | None = None,
        allow_mismatch: bool | str = False,
        engine: bool | str = False,
        **kwargs,
    ) -> None:
        from suntool.errors import SuntoolError

        spec = artifact if artifact is not None else pretrained
        if spec is None:
            raise SuntoolError("the suntool lm-eval model needs --model_args artifact=PATH")
        if device is None or (str(device).startswith("cuda") and not torch.cuda.is_available()):
            device = "cuda" if torch.cuda.is_available() else "cpu"  # lm-eval's CLI asks for cuda by default
        if str(batch_size) == "auto":
            raise SuntoolError("batch_size=auto is not supported by the suntool model; pass a number")
        loaded = spec if isinstance(spec, LoadedArtifact) else load_artifact(
            spec, dtype=dtype, device=device, allow_mismatch=_as_bool(allow_mismatch)
        )
        self.artifact = loaded
        self._engine_spec = None
        if _as_bool(engine):
            if not isinstance(spec, (str, bytes)) and not hasattr(spec, "__fspath__"):
                raise SuntoolError("engine=true needs the artifact as a path or name (the engine loads its own copy)")
            self._engine_spec = (str(spec), dtype, _as_bool(allow_mismatch))
        # HFLM warns twice that `pretrained` is a model object, not a name: here that is the design.
        hf_logger = logging.getLogger("lm_eval.models.huggingface")
        level = hf_logger.level
        hf_logger.setLevel(logging.ERROR)
        try:
            super().__init__(
                pretrained=loaded.decode_model,
                tokenizer=loaded.tokenizer,
                batch_size=int(batch_size),
                max_length=max_length,
                device=device,
                **kwargs,
            )
        finally:
            hf_logger.setLevel(level)
        self.tokenizer.padding_side = "left"

    @property
    def first_token(self) -> str:
        return self.artifact.manifest.handoff.first_token

    def _prefill(self, rows: list[list[int]]):
        """Left-pad token rows and run them through the prefill half."""
        width = max(len(row) for row in rows)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.tensor([[pad] * (width - len(row)) + row for row in rows], device=self.device)
        mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows], device=self.device)
        handoff = prefill(self.artifact.prefill_model, ids, mask, first_token=self.first_token)
        return handoff.to(device=self.artifact.decode_model.device, dtype=self.artifact.decode_model.dtype)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i][1]) - len(requests[i][2]))
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        batch = override_bs or self.batch_size
        for start in range(0, len(order), batch):
            chunk = order[start : start + batch]
            contexts, continuations = [], []
            for index in chunk:
                _, context, continuation = requests[index]
                if not continuation:
                    raise ValueError("empty continuation")
                whole = (context + continuation)[-(self.max_length + 1) :]
                contexts.append(whole[: len(whole) - len(continuation)])
                continuations.append(continuation)
            width = max(len(c) for c in continuations)
            cont_ids = torch.tensor([c + [0] * (width - len(c)) for c in continuations], device=self.device)
            cont_mask = torch.tensor([[1] * len(c) + [0] * (width - len(c)) for c in continuations], device=self.device)
            with torch.no_grad():
                handoff = self._prefill(contexts)
                logits = continuation_logits(self.artifact.decode_model, handoff, cont_ids, cont_mask)
                logprobs = torch.log_softmax(logits.float(), dim=-1)
            for row, index in enumerate(chunk):
                length = len(continuations[row])
                target = cont_ids[row, :length]
                row_logprobs = logprobs[row, :length]
                total = float(row_logprobs.gather(-1, target[:, None]).sum())
                greedy = bool((row_logprobs.argmax(dim=-1) == target).all())
                results[index] = (total, greedy)
                cache_key = requests[index][0]
                if cache_key is not None:
                    self.cache_hook.add_partial("loglikelihood", cache_key, (total, greedy))
            if self.on_requests is not None:
                tokens = sum(len(c) for c in contexts) + sum(len(c) for c in continuations)
                self.on_requests("loglikelihood", start + len(chunk), len(order), tokens)
        return results

    def generate_until(self, requests, disable_tqdm: bool = False):
        self._generated = (0, len(requests))
        if self._engine_spec is not None:
            return self._generate_on_engine(requests)
        return super().generate_until(requests, disable_tqdm=disable_tqdm)

    def _generate_on_engine(self, requests) -> list[str]:
        """generate_until on the serving engine: all requests at once, lm-eval's encoding and post-processing."""
        from lm_eval.models.huggingface import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text

        from suntool.serve.engine import EngineConfig
        from suntool.serve.offline import generate_offline
        from suntool.serve.sequence import SamplingParams

        spec, dtype, allow_mismatch = self._engine_spec
        eos = self.tok_decode(self.eot_token_id, skip_special_tokens=False)
        prompts, params, stops = [], [], []
        for request in requests:
            context, gen_kwargs = request.args
            kwargs = normalize_gen_kwargs(dict(gen_kwargs), self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            max_gen_toks = kwargs.pop("max_gen_toks")
            encoded, _ = self.tok_batch_encode([context], left_truncate_len=self.max_length - max_gen_toks,
                                               truncation=self.truncation)
            temperature = float(kwargs.get("temperature", 0.0) or 0.0) if kwargs.get("do_sample") else 0.0
            prompts.append(encoded[0].tolist())
            params.append(SamplingParams(max_tokens=max_gen_toks, temperature=temperature,
                                         top_p=float(kwargs.get("top_p", 1.0) or 1.0),
                                         top_k=int(kwargs.get("top_k", 0) or 0),
                                         seed=kwargs.get("seed"), stop=tuple(u for u in until if u)))
            stops.append(until)

        def finished(done: int, total: int, result) -> None:
            self._generated = (done, total)
            if self.on_requests is not None:
                self.on_requests("generate_until", done, total, len(result.token_ids))

        device = self.device.type if isinstance(self.device, torch.device) else str(self.device)
        config = EngineConfig(dtype=dtype, allow_mismatch=allow_mismatch, device=device)
        outputs = generate_offline(spec, prompts, params, config=config, on_finished=finished)
        think_end = self.think_end_token if isinstance(self.think_end_token, str) else None
        results = []
        for until, output, request in zip(stops, outputs, requests, strict=True):
            text = postprocess_generated_text(generation=self.tok_decode(list(output.token_ids)), stop=until,
                                              think_end_token=think_end)
            results.append(text)
            self.cache_hook.add_partial("generate_until", request.args, text)
        return results

    def _model_generate(self, context, max_length: int, stop: list[str], **generation_kwargs):
        """Generate through prefill → decode; returns context + new tokens like `model.generate`."""
        attention_mask = generation_kwargs.pop("attention_mask", None)
        if attention_mask is None:
            attention_mask = (context != self.tokenizer.pad_token_id).long()
        temperature = float(generation_kwargs.get("temperature", 0.0) or 0.0)
        do_sample = generation_kwargs.get("do_sample")
        if do_sample is False:
            temperature = 0.0
        config = SamplingConfig(
            max_new_tokens=max(1, max_length - context.shape[1]),
            temperature=temperature,
            top_p=float(generation_kwargs.get("top_p", 1.0) or 1.0),
            top_k=int(generation_kwargs.get("top_k", 0) or 0),
            seed=generation_kwargs.get("seed"),
        )
        rows = [[] for _ in range(context.shape[0])]
        texts = ["" for _ in rows]

        def stop_check(row: int, token: int) -> bool:
            rows[row].append(token)
            texts[row] = self.tokenizer.decode(rows[row], skip_special_tokens=False)
            return any(s and s in texts[row] for s in stop)

        pad = self.tokenizer.pad_token_id or 0
        with torch.no_grad():
            ids = [row[mask.bool()].tolist() for row, mask in zip(context, attention_mask, strict=True)]
            handoff = self._prefill(ids)
            result = decode(self.artifact.decode_model, handoff, config, pad_token_id=pad, stop_check=stop_check)
        if self.on_requests is not None:
            done, total = self._generated
            self._generated = (done + len(result.tokens), total)
            self.on_requests("generate_until", self._generated[0], total, sum(len(t) for t in result.tokens))
        width = max((len(t) for t in result.tokens), default=0)
        new = torch.tensor([t + [pad] * (width - len(t)) for t in result.tokens], device=context.device)
        return torch.cat([context, new.to(context.dtype)], dim=1)
