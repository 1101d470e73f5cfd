"""GReaT (the ``be-great`` package) as a harness baseline, on the same decoder LLM as DiffLM.

GReaT fine-tunes the LLM on rows written as ``"col is value, col is value"`` (column order shuffled per row)
and samples whole rows from it. It has no time budget, no seed and no validity check of its own, so this
wrapper adds what a careful user would:

- the same packaged SmolLM2 decoder as DiffLM, with LoRA (GReaT's ``efficient_finetuning="lora"``), bf16
  autocast where the CPU does bf16 natively (as DiffLM gets), a constant learning rate after a short warm-up,
  and training stopped at the time budget instead of after a fixed epoch count;
- a pad token that GReaT's text clean-up strips: SmolLM2 pads with ``<|im_end|>``, which GReaT leaves in
  the decoded text, so the first field of every left-padded row would fail to parse;
- ``max_length`` from the longest tokenised training row (GReaT's default of 100 tokens cuts Adult rows);
- sampling in rounds until ``n`` valid rows or the sampling deadline, keeping only rows whose categories
  occur in training, with no missing value where training had none and numbers that parse; the share of
  generated texts that gave such a row is the first-try valid share.
"""
from __future__ import annotations

import random
import shutil
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import torch


def great_llm_dir(decoder: str | None = None) -> str:
    """A Hugging Face folder of ``decoder`` (default: the packaged SmolLM2) whose pad token is ``<|endoftext|>``.

    The weights are linked, not copied; the folder is built once next to the decoder's cache folder.
    """
    from transformers import AutoTokenizer

    from tabdifflm.decoder import resolve_decoder

    src = Path(resolve_decoder(decoder))
    dst = src.parent / f"{src.name}-great"
    if (dst / "config.json").exists():
        return str(dst)
    tmp = Path(tempfile.mkdtemp(dir=src.parent, prefix=".tmp-great-"))
    try:
        for f in src.iterdir():
            if f.suffix == ".safetensors" or f.name.endswith(".index.json"):
                (tmp / f.name).symlink_to(f.resolve())
            elif f.name in ("config.json", "generation_config.json"):
                shutil.copy(f, tmp / f.name)
        tok = AutoTokenizer.from_pretrained(src)
        tok.pad_token = "<|endoftext|>"
        tok.save_pretrained(tmp)
        tmp.rename(dst)
    except FileExistsError:
        shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return str(dst)


def _stop_at(deadline: float):
    from transformers import TrainerCallback

    class StopAtDeadline(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if time.monotonic() >= deadline:
                control.should_training_stop = True

    return StopAtDeadline()


def clean_rows(gen: pd.DataFrame, train: pd.DataFrame) -> pd.DataFrame:
    """GReaT's parsed rows -> rows valid for ``train`` (training categories, no new missing values), in its dtypes."""
    out, ok = {}, pd.Series(True, index=gen.index)
    for c in train.columns:
        col = gen[c] if c in gen else pd.Series(np.nan, index=gen.index)
        if pd.api.types.is_numeric_dtype(train[c]) and not pd.api.types.is_bool_dtype(train[c]):
            v = pd.to_numeric(col, errors="coerce")
            ok &= v.notna() | col.isna()
            if pd.api.types.is_integer_dtype(train[c]):
                v = v.round()
        else:
            seen = {str(x): x for x in train[c].dropna().unique()}
            v = col.map(lambda x: seen.get(str(x).strip(), np.nan) if pd.notna(x) else np.nan)
            ok &= v.notna() | col.isna()
        if train[c].notna().all():
            ok &= v.notna()
        out[c] = v
    df = pd.DataFrame(out)[ok].reset_index(drop=True)
    for c in train.columns:
        if train[c].notna().all() or not pd.api.types.is_integer_dtype(train[c]):
            df[c] = df[c].astype(train[c].dtype)
    return df


class GReaTBaseline:
    """``be_great.GReaT`` with a time budget, a seed and validated output.

    Parameters
    ----------
    seed : seeds ``random``, numpy and torch before fitting and sampling (GReaT takes no seed).
    decoder : decoder LLM (default: the packaged SmolLM2, as DiffLM uses).
    learning_rate, batch_size, lora_r : fine-tuning settings (LoRA on the attention and MLP projections).
    temperature : sampling temperature (GReaT's default 0.7).
    sample_batch : rows generated per ``generate`` call.
    """

    def __init__(self, seed=0, decoder=None, learning_rate=5e-4, batch_size=8, lora_r=16, temperature=0.7,
                 sample_batch=64):
        self.seed, self.decoder = seed, decoder
        self.learning_rate, self.batch_size, self.lora_r = learning_rate, batch_size, lora_r
        self.temperature, self.sample_batch = temperature, sample_batch

    def _seed(self, offset=0):
        random.seed(self.seed + offset)
        np.random.seed(self.seed + offset)
        torch.manual_seed(self.seed + offset)

    def fit(self, train: pd.DataFrame, budget_s: float):
        """Fine-tune until ``budget_s`` seconds (from this call) have passed."""
        import be_great.great as gg
        from be_great import GReaT

        from tabdifflm.decoder import resolve_dtype

        start = time.monotonic()
        self._seed()
        self.train_ = train.reset_index(drop=True)
        llm = great_llm_dir(self.decoder)
        # one device for fitting and sampling; bf16 wherever it is native there, as for DiffLM's decoder
        self.device_ = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        bf16 = resolve_dtype("auto", self.device_) == torch.bfloat16
        workdir = tempfile.mkdtemp(prefix="great-")  # GReaT's experiment_dir; nothing is kept there
        self.model_ = GReaT(llm, experiment_dir=workdir, epochs=10_000, batch_size=self.batch_size,
                            efficient_finetuning="lora", lora_config={"r": self.lora_r, "lora_alpha": 2 * self.lora_r},
                            learning_rate=self.learning_rate, lr_scheduler_type="constant_with_warmup",
                            warmup_steps=20, save_strategy="no", logging_steps=25, bf16=bf16,
                            use_cpu=self.device_.type == "cpu", seed=self.seed,
                            data_seed=self.seed)
        # Longest training row in GReaT's text form, plus room for the start prompt's padding.
        tok = self.model_.tokenizer
        texts = [", ".join(f"{c} is {str(v).strip()}" for c, v in row.items()) for row in self.train_.to_dict("records")]
        self.max_length_ = max(len(tok(t)["input_ids"]) for t in texts) + 8
        deadline = start + budget_s

        class Budgeted(gg.GReaTTrainer):  # GReaT builds its trainer inside fit(); this adds the deadline
            def __init__(self, *a, callbacks=None, **k):
                super().__init__(*a, callbacks=[*(callbacks or []), _stop_at(deadline)], **k)

        try:
            with mock.patch.object(gg, "GReaTTrainer", Budgeted):
                trainer = self.model_.fit(self.train_)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        self.steps_ = trainer.state.global_step
        self.epochs_ = float(trainer.state.epoch or 0.0)
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        self.final_loss_ = losses[-1] if losses else None
        if bf16:  # sample in the dtype DiffLM samples in
            self.model_.model.to(torch.bfloat16)
        return self

    def sample(self, n: int, budget_s: float | None = None, start_col: str | None = None,
               start_col_dist: dict | list | None = None) -> pd.DataFrame:
        """Up to ``n`` valid rows; fewer only if ``budget_s`` runs out. Sets ``first_try_valid_share_``.

        GReaT's own ``sample`` drives generation; every generated batch is parsed and validated here, so
        no row is lost to GReaT's truncation and each generated text is counted once. ``start_col`` and
        ``start_col_dist`` are GReaT's conditioning: every row starts with that column, its value drawn from
        ``{value: probability}`` (a category) or from a list of values (a number).
        """
        from be_great.great_utils import _convert_text_to_tabular_data, _convert_tokens_to_text

        self._seed(1)
        model = self.model_
        deadline = None if budget_s is None else time.monotonic() + budget_s
        base_generate = model.model.generate
        batches, generated = [], 0

        def recording_generate(*a, **k):
            nonlocal generated
            tokens = base_generate(*a, **k)
            texts = _convert_tokens_to_text(tokens, model.tokenizer)
            batches.append(clean_rows(_convert_text_to_tabular_data(texts, model.columns), self.train_))
            generated += len(texts)
            return tokens

        with mock.patch.object(model.model, "generate", recording_generate):
            while sum(map(len, batches)) < n and (deadline is None or time.monotonic() < deadline):
                # one parsed row ends GReaT's inner loop, so the deadline is checked after every batch
                model.sample(1, k=self.sample_batch, max_length=self.max_length_, start_col=start_col or "",
                             start_col_dist=start_col_dist, temperature=self.temperature, device=str(self.device_))
        self.texts_generated_ = generated
        out = pd.concat(batches, ignore_index=True) if batches else clean_rows(
            pd.DataFrame(columns=self.train_.columns), self.train_)
        self.first_try_valid_share_ = len(out) / generated if generated else 0.0
        return out.iloc[:n].reset_index(drop=True)
