"""DiffLMSynthesizer: the scikit-learn-style estimator that ties the parts together."""
from __future__ import annotations

import copy
import math
import numbers
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import HasMethods, Interval, InvalidParameterError, StrOptions
from sklearn.utils.validation import check_is_fitted
from tqdm.auto import tqdm

from . import __version__, parallel
from .conditions import link_inequalities, parse_conditions, restrict, without_missing
from .constraints import Constraint, FixedCombinations, Inequality, Positive, broken_rows, check_constraints
from .constraints import from_dict as constraint_from_dict
from .decoder import DEFAULT_DECODER, DecoderAdapter, fingerprint, load_decoder, quiet_unless_verbose, resolve_dtype
from .diffusion import SIGMA_MIN, MLPDenoiser, blend_latents, calibrate_sigma_min, sample_heun
from .dp import PrivacyLedger, default_delta
from .encoder import DEFAULT_ENCODER, RowEncoder, load_backbone
from .features import RowFeaturizer
from .grammar import END, InvalidValue, RowGrammar
from .marginals import choice_counts, marginal_bias
from .injection import METHODS, Injector
from .metadata import Layout, parse_metadata
from .model import LatentLogitHead, RowModel, RowVAE
from .numbers import NumberHead
from .persistence import ModelFileError, read_model_file, write_model_file
from .privacy import MODES as FILTER_MODES, NearestRowFilter, Quota
from .schema import Schema, build_frame, check_frame, frame_rows, infer_schema
from .serialization import FORMATS, NUMBER_FORMATS, RowFormat, encoder_text
from .training import VAEData, mu_dev, pad_batch, time_diffusion_step, train_diffusion, train_readout, train_vae

MIN_ROWS = 10
MIN_PROBE_ROWS = 20  # fewer validation rows than this: the memorisation gap is too noisy to act on
PROBE_ROWS = 64  # training rows scored at each evaluation for the gap
DP_DIFFUSION_BATCH = 128  # expected Poisson batch of the prior's DP-SGD steps (at most half the rows)
LEGACY_PARAMS = {"number_format": "plain", "latent_head": False, "latent_head_hidden": 0,
                 "latent_head_context": False, "latent_readout": 0, "latent_dropout": 0.0, "number_head": 0,
                 "aux_weight": 0.0, "aux_steps": 0, "aux_stop_gap": None, "row_features": False, "column_loss": "token",
                 "memorisation_gap": None, "diffusion_learning_rate": 1e-3,
                 "privacy_sample": 0, "diffusion_sigma_min": SIGMA_MIN, "marginal_rows": 0,
                 "privacy_filter": None, "privacy_filter_radius": 1.0}
MIN_CORRECTION_ROWS = 64  # a marginal correction round with fewer rows than this is not used
READOUT_DRAWS = 2  # latents near each training row that the read-out's stage learns from
READOUT_CHOICES = 150_000  # at most this many (row, choice) hidden states held by that stage
READOUT_BYTES = 1.5e9  # and at most this much memory for them and their logits
PRIOR_MARGIN = 1.25  # the VAE stage holds back this many times the prior's timed steps
RETIME_S = 60.0  # the prior's step is timed again at a VAE evaluation this long after the last timing
# the VAE stage holds back the read-out's rows at this many times its validation pass's time a row, which also
# runs the encoder: on Beijing 0.044 s a row against the read-out's own 0.032 (so 1.0 already leaves room)
READOUT_MARGIN = 1.0
_DECODERS: dict = {}  # (source, dtype, device) -> (model, tokenizer, resolved, fingerprint); frozen, so shareable


# prefix in the saved file -> fitted attribute holding that trained module (None where the model has none)
_PARTS = {"encoder": "encoder_", "injector": "injector_", "latent_head": "latent_head_",
          "adapter": "decoder_adapter_", "denoiser": "denoiser_"}


# what the number head's first 0.11 files also saved; read off the grammar since, so never loaded
_NO_LONGER_SAVED = {f"latent_head.numbers.{k}" for k in ("decimals", "digit", "index", "low", "minus", "width")}


def _part(tensors: dict, prefix: str) -> dict:
    """The saved tensors under ``prefix.``, with the prefix taken off (a module's state dict)."""
    return {k[len(prefix) + 1:]: v for k, v in tensors.items()
            if k.startswith(prefix + ".") and k not in _NO_LONGER_SAVED}


def _get_decoder(decoder, dtype, device):
    key = (str(decoder), str(dtype), str(device))
    if key not in _DECODERS:
        model, tok, src = load_decoder(decoder, dtype, device)
        _DECODERS[key] = (model, tok, src, fingerprint(model))
    return _DECODERS[key]


def _known_tokens(col, automaton, v):
    """Tokens that write value v of a column, or None where the model cannot write it (unseen category,
    out of range, finer than the column's precision)."""
    try:
        if col.kind == "numeric" and not col.is_int:
            if not col.min <= v <= col.max:
                return None
            v = round(v, col.decimals)
        seq = automaton.encode(v)
    except (ValueError, KeyError, TypeError):
        return None
    state = automaton.start()
    for t in seq:  # the automaton must accept it (range, format)
        if t not in automaton.allowed(state):
            return None
        state = automaton.step(state, t)
    return list(seq) if END in automaton.allowed(state) else None


def _placeholder(col):
    """Some value the grammar can write, for cells the latent head does not score."""
    if col.kind == "categorical":
        return col.categories[0] if col.categories else None
    return int(col.min) if col.kind == "datetime" or col.is_int else col.min


class DiffLMSynthesizer(BaseEstimator):
    """Synthetic tables with DiffLM: VAE on row text, latent diffusion, frozen LLM decoder.

    Parameters
    ----------
    encoder : str or None
        Hugging Face id or local folder of the text encoder; None = packaged all-MiniLM-L6-v2.
    decoder : str or None
        Hugging Face causal-LM id, local folder or ``.gguf`` file; None = packaged SmolLM2-135M-Instruct.
        Its weights are never changed.
    injection : {"soft_prompt", "kv_memory", "embedding"}
        How the latent reaches the decoder.
    n_soft_tokens : int
        Latent soft tokens (soft_prompt only). n_prefix_tokens : learnable constant prefix tokens.
    latent_dim : int
        VAE latent size.
    serialization : {"values", "json"}
        Row text format; "json" is the paper's ``json.dumps(row)``.
    number_format : {"auto", "fixed", "plain"}
        "fixed" zero-pads each number's integer part to the column's widest, so the decoder commits to the
        magnitude with its first digit; "plain" writes numbers as usual (the paper). "fixed" needs
        serialization="values"; "auto" is "fixed" there and "plain" with "json".
    latent_head : bool
        Add the latent logit head: a linear map from the latent to logits for every (column, position)
        choice, added to the frozen decoder's. It gives the latent a direct say over each column, so the
        latent must carry them all (the target included). False = the paper's model.
    latent_head_hidden : int
        Width of a hidden SiLU layer in the latent head, beside its linear map (0 = linear only, the
        previous default). A digit
        after the first is not a monotone function of a number (the tens digit of 129 vs 139 vs 200), so a
        linear map of the latent can only set the leading digit of each number; the hidden layer can set them all.
    latent_head_context : bool
        The hidden layer also reads the token just written (used only with ``latent_head_hidden > 0``). A
        digit's logits then depend on the digit before it, so a number near a carry (99 / 100) is not
        written as a mix of both (199, 000). Off by default: on Beijing PM2.5 it cut the pair-trend error
        from 4.4 to 0.6 % but left MLE where it was and widened the target-association gap
        (docs/design.md).
    latent_readout : int
        Width of a trained read-out of the frozen decoder's hidden state (one SiLU hidden layer), added to
        the latent head's logits (0 = none; used only with ``latent_head=True``). The latent head's logits
        depend on the latent alone, so given the latent each column is drawn without regard to the columns
        already written. A latent the VAE saw names one row and that is enough; but the sampler, stopped
        early so that it does not copy rows, returns a blend of nearby training latents, and from a blend
        the head writes each column of another neighbour: rows that contradict themselves (Adult: a wife who
        is male, education 9th with education-num 13). The decoder's hidden state has read the row so far,
        so after the prior is trained the read-out gets a stage of its own (``history_["readout"]``): each
        training row is written from the latent the sampler, as calibrated, returns near it, and the
        read-out learns what the blend leaves open; the epoch with the best validation NLL is kept. It
        costs one decoder pass per row and draw (two draws, rows drawn to hold at most 150,000 choices'
        hidden states); under ``max_time`` the VAE stage holds back those passes' time at the rate it measures
        on its own validation passes (0.17.2; before, an eighth of ``max_time``). On Adult it cut the rows
        that break a rule the real rows keep from 42 to 16.5 % at a higher MLE (docs/design.md, "Version
        0.17"). Ignored under ``dp_epsilon`` (no read-out is built). Models written by version 0.16 keep
        their rank-``latent_readout`` linear read-out.
    latent_dropout : float in [0, 1)
        Share of each VAE training batch's rows reconstructed without the latent head's logits (the decoder
        and its read-out alone), which also trains the read-out during the VAE stage.
    number_head : int
        Mixture components of the number head (0 = none; used only with ``latent_head=True`` and
        fixed-width numbers). It gives each number column one distribution over its value from the latent
        (a mixture of logistics over the value spread by its training quantiles), and each digit the
        log-probability of the interval of values it leaves open: one smooth function of the latent sets
        all of a number's digits, where per-position logits learn every digit as a separate class
        (tabdifflm/numbers.py, docs/design.md).
    aux_weight : float
        Weight of the latent head's own reconstruction loss (the head alone, without the decoder), which makes
        the latent carry every column. Used only with ``latent_head=True``; 0 turns it off.
    aux_steps : int
        Steps on that loss after each decoder step, training the encoder head and the latent head on the
        text encoder's forward pass only. They cost no decoder pass, so the latent learns the columns far
        faster than through the LLM alone. Default 10 (3 before version 0.4; measured in docs/design.md).
    aux_stop_gap : float or None
        The heads-only steps stop for the rest of the VAE stage once an evaluation's memorisation gap (see
        ``memorisation_gap``) is above this: they show the heads the training rows ten times per decoder
        step, which is what learns the rows by heart first; the decoder steps go on. None: they never stop
        (before version 0.8). Acts with at least 20 validation rows, as the gap check does.
    row_features : bool
        Give the encoder head each value exactly (numbers as training quantiles, categories one-hot) beside
        the text encoder's pooled reading, so small but decisive columns reach the latent. False = the
        paper's text-only encoder.
    column_loss : {"column", "token"}
        "column": every (row, column) cell weighs the same in the reconstruction loss (mean token NLL per
        cell); "token": the paper's mean over tokens, where a long number outweighs a one-token class.
    max_beta, min_beta : float
        KL weight schedule: starts at max_beta, x0.7 when validation stalls, floor min_beta. The paper's
        max_beta is 0.1 with a token-mean loss; with the column-balanced loss 0.01 lets the latent carry
        the numbers too (docs/design.md).
    max_epochs : int
        VAE epochs. max_time : float or None — seconds for the whole fit; the stages share it.
    memorisation_gap : float or None
        Stop the VAE before it memorises its rows. Each evaluation also scores 64 training rows (fewer if
        there are fewer validation rows) the same way; the gap (validation NLL - training NLL) /
        validation NLL is about 0 for a model that learnt the table and grows as it learns the rows
        themselves. A checkpoint with a gap above this is never kept, and two in a row end the stage
        (``history_["stopped"]["vae"] == "memorisation"``). Acts with at least 20 validation rows.
        None: only the best validation NLL chooses (the paper).
    privacy_sample : int
        Rows sampled at the end of fit for ``privacy_report_``: how much closer they sit to the training
        rows than the validation rows (never learnt from) do, and exact copies; at most the number of
        validation rows, within ``max_time``. 0: no report.
    privacy_filter : {"strict", "match"} or None
        Keep new rows out of the training rows' own neighbourhoods (:mod:`tabdifflm.privacy`). A training row's
        neighbourhood is a ball around it, ``privacy_filter_radius`` times its distance to its nearest other
        training row; a new row inside it points at that one row. Unseen real rows land inside such balls
        too, at a rate the fit measures on the validation slice (``privacy_report_["filter"]["base_rate"]``).
        "strict" (default since 0.18): :meth:`sample` turns away every row inside; "match": only enough that
        no more of its rows are inside than that rate. Rows turned away are written again
        (``last_sample_stats_["privacy_filter_share"]``). The fitted filter holds the training rows (numbers
        scaled, categories as codes): a saved model with one is as sensitive as the training table. None at
        fit: no filter is built. Not built under ``dp_epsilon`` (it reads the training rows outside the
        accounting). Can be changed after fit (to None as well).
    privacy_filter_radius : float in (0, 1]
        The neighbourhood's radius as a share of the distance to the nearest other training row. 0.5
        (default): a row is turned away when it sits nearer a training row than the midpoint between that
        row and its nearest training neighbour; 1: anywhere nearer it than that neighbour (on Adult this
        turned away 42 % of rows and pushed them further from the training rows than unseen rows are; 0.5
        turned away 22 %, docs/design.md). Can be changed after fit.
    dp_epsilon : float or None
        Train with differential privacy (DP-SGD, Opacus's clipping, noise and RDP accounting) to this epsilon:
        every stage that learns from the rows (the VAE's encoder head, injector, latent head and LoRA adapter;
        the diffusion prior) takes per-row clipped, noised steps on Poisson batches. The text encoder's
        backbone stays frozen, every row is a training row (no validation slice: no checkpoint choice,
        memorisation check or DCR report; beta stays ``max_beta``), the VAE plans ``max_epochs`` epochs and
        the prior a tenth of ``diffusion_train_steps`` on batches of about 128 rows. ``privacy_report_``
        gives the epsilon spent (less than planned when ``max_time`` ends the fit first). Not covered: the
        schema read from the data (column names, category sets, number widths and decimals, the row
        features' quantile grid); see the fitting guide. None: no DP (default).
    dp_delta : float or None
        The delta of (epsilon, delta)-DP; None: 1 / (10 x rows).
    dp_max_grad_norm : float
        Each row's gradient is clipped to this L2 norm before noise is added.
    decoder_adapter : {None, "lora"}
        None (default, the paper): the decoder LLM stays exactly as pretrained. "lora": low-rank adapters
        (peft's LoRA, on peft's default modules for the architecture) are trained on a private copy of the
        decoder; the base weights stay frozen and the saved file stores only the adapter (1.8 MB at rank 8 on
        SmolLM2-135M). Costs the copy's memory (SmolLM2-135M: ~270 MB).
    lora_rank, lora_alpha : int, float
        LoRA's rank r and scale alpha (the update is alpha / r x B A). Used with decoder_adapter="lora".
    batch_size, learning_rate, encoder_learning_rate : training of the VAE (learning_rate: head, injector
        and adapter).
    prior : {"diffusion", "gaussian"}
        Latent prior; "gaussian" (a full-covariance normal) is the ablation the paper's reviewers asked for.
    diffusion_steps : int
        Heun sampling steps. diffusion_train_steps, diffusion_learning_rate : denoiser training steps and
        peak learning rate (cosine decay); 5,000 and 2e-3 since version 0.11 (before, 3,000 and 1e-3, which
        left the prior of the number head's sharper latents undertrained).
    diffusion_sigma_min : "auto" or float
        The noise level at which the prior's sampler stops and returns the denoiser's estimate. EDM's (the
        paper's) 0.002 lets a denoiser that learnt its few thousand latents one by one carry every draw
        onto a training row's latent; stopping at a larger sigma returns a weighted mean of the nearby
        training latents instead. "auto" (default): at the end of fit, the smallest value of a grid
        (0.002 to 1.4) at which 1,000 draws sit no nearer the training latents than the validation rows'
        latents do, with 95 % confidence (``history_["prior_calibration"]``, fitted value
        ``diffusion_sigma_min_``); 0.002 under ``dp_epsilon`` or with fewer than 20 validation rows. A number
        fixes it, and can be set after fit (``set_params``, or ``tabdifflm sample --sigma-min``) without
        refitting: lower keeps the sharper prior (column shapes and pair trends closer to the training
        rows), higher keeps the rows further from them. Every fit calibrates, whatever the value, so "auto"
        can also be set later. Measured in docs/design.md ("Memorisation").
    marginal_rows : int
        Rows the model writes at the end of fit to put the categorical columns' frequencies back (0: none).
        A sampler stopped early (``diffusion_sigma_min``) draws latents between training rows, where the
        decoder leans to each column's most common value; the fit compares how often its rows make each
        categorical choice with how often the training rows do, and adds the log ratio to those choices'
        logits whenever it samples at that stopping point (:mod:`tabdifflm.marginals`,
        ``history_["marginal_correction"]``; :meth:`correct_marginals` re-estimates it, for instance after
        ``set_params(diffusion_sigma_min=...)``). Needs ``latent_head=True``; not under ``dp_epsilon``,
        whose accounting does not cover the training rows' frequencies. It lowers the shape and pair-trend
        errors; 0 after fit samples without a fitted correction.
    temperature : float
        Decoder sampling temperature (0 = greedy).
    decoder_dtype : {"auto", "float32", "bfloat16", "float16"}
    device : "auto", "cpu", "cuda", ...
    validation_size : float
        Share of the training rows held out for the beta schedule and checkpoint choice.
    sample_batch_size : int, max_sample_attempts : int
    metadata : dict, SDV metadata or None
        Column types where inference guesses wrong, in SDV's vocabulary (SDV's metadata dict or object
        works as it is): ``{"zip": "categorical"}`` learns integer codes as categories, ``"id"`` (or SDV's
        ``primary_key``) columns get new unique keys instead of being learnt, ``"drop"`` keeps a column
        out, ``"numerical"``/``"datetime"`` (with ``datetime_format``) read numbers and dates held as text.
        See :mod:`tabdifflm.metadata`.
    n_jobs : int or None
        Torch threads while fitting and sampling (None: torch's default, one per core; -1 all cores, -2
        all but one). Lower it on a shared machine or when several fits run side by side.
    random_state : int, RandomState or None
    verbose : bool
        Progress bars with losses.
    """

    _pos_int = [Interval(numbers.Integral, 1, None, closed="left")]
    _parameter_constraints = {
        "encoder": [str, os.PathLike, None], "decoder": [str, os.PathLike, None],
        "injection": [StrOptions(set(METHODS))],
        "n_soft_tokens": [Interval(numbers.Integral, 0, None, closed="left")],
        "n_prefix_tokens": [Interval(numbers.Integral, 0, None, closed="left")],
        "latent_dim": _pos_int,
        "serialization": [StrOptions(set(FORMATS))],
        "number_format": [StrOptions({"auto", *NUMBER_FORMATS})],
        "latent_head": ["boolean"], "row_features": ["boolean"],
        "latent_head_hidden": [Interval(numbers.Integral, 0, None, closed="left")],
        "latent_head_context": ["boolean"],
        "latent_readout": [Interval(numbers.Integral, 0, None, closed="left")],
        "latent_dropout": [Interval(numbers.Real, 0, 1, closed="left")],
        "number_head": [Interval(numbers.Integral, 0, None, closed="left")],
        "aux_weight": [Interval(numbers.Real, 0, None, closed="left")],
        "aux_steps": [Interval(numbers.Integral, 0, None, closed="left")],
        "aux_stop_gap": [Interval(numbers.Real, 0, None, closed="neither"), None],
        "column_loss": [StrOptions({"column", "token"})],
        "max_beta": [Interval(numbers.Real, 0, None, closed="neither")],
        "min_beta": [Interval(numbers.Real, 0, None, closed="neither")],
        "max_epochs": [Interval(numbers.Integral, 0, None, closed="left")],
        "max_time": [Interval(numbers.Real, 0, None, closed="neither"), None],
        "memorisation_gap": [Interval(numbers.Real, 0, None, closed="neither"), None],
        "privacy_sample": [Interval(numbers.Integral, 0, None, closed="left")],
        "privacy_filter": [StrOptions(set(FILTER_MODES)), None],
        "privacy_filter_radius": [Interval(numbers.Real, 0, 1, closed="right")],
        "dp_epsilon": [Interval(numbers.Real, 0, None, closed="neither"), None],
        "dp_delta": [Interval(numbers.Real, 0, 1, closed="neither"), None],
        "dp_max_grad_norm": [Interval(numbers.Real, 0, None, closed="neither")],
        "decoder_adapter": [StrOptions({"lora"}), None],
        "lora_rank": _pos_int, "lora_alpha": [Interval(numbers.Real, 0, None, closed="neither")],
        "batch_size": _pos_int,
        "learning_rate": [Interval(numbers.Real, 0, None, closed="neither")],
        "encoder_learning_rate": [Interval(numbers.Real, 0, None, closed="left")],
        "prior": [StrOptions({"diffusion", "gaussian"})],
        "diffusion_steps": _pos_int, "diffusion_train_steps": _pos_int,
        "diffusion_learning_rate": [Interval(numbers.Real, 0, None, closed="neither")],
        "diffusion_sigma_min": [StrOptions({"auto"}), Interval(numbers.Real, 0, 80, closed="neither")],
        "marginal_rows": [Interval(numbers.Integral, 0, None, closed="left")],
        "temperature": [Interval(numbers.Real, 0, None, closed="left")],
        "decoder_dtype": [StrOptions({"auto", "float32", "bfloat16", "float16"})],
        "device": [str, torch.device],
        "validation_size": [Interval(numbers.Real, 0, 0.5, closed="neither")],
        "eval_every": _pos_int, "sample_batch_size": _pos_int, "max_sample_attempts": _pos_int,
        "constraints": [list, tuple, Constraint, None],
        "metadata": [dict, HasMethods(["to_dict"]), None],
        "n_jobs": [Interval(numbers.Integral, None, None, closed="neither"), None],
        "random_state": ["random_state"], "verbose": ["verbose"],
    }

    def __init__(self, encoder=None, decoder=None, injection="soft_prompt", n_soft_tokens=8, n_prefix_tokens=8,
                 latent_dim=64, serialization="values", number_format="auto", latent_head=True,
                 latent_head_hidden=256, latent_head_context=False, latent_readout=256, latent_dropout=0.0,
                 number_head=4, aux_weight=1.0, aux_steps=10,
                 aux_stop_gap=0.05, row_features=True, column_loss="column",
                 max_beta=0.01, min_beta=1e-3, max_epochs=10, max_time=None, memorisation_gap=0.15,
                 privacy_sample=200, privacy_filter="strict",
                 privacy_filter_radius=0.5, dp_epsilon=None, dp_delta=None, dp_max_grad_norm=1.0,
                 decoder_adapter=None, lora_rank=8,
                 lora_alpha=16.0, batch_size=16, learning_rate=3e-3, encoder_learning_rate=5e-5, prior="diffusion",
                 diffusion_steps=50, diffusion_train_steps=5000, diffusion_learning_rate=2e-3,
                 diffusion_sigma_min="auto", marginal_rows=1000, temperature=1.0, decoder_dtype="auto",
                 device="auto", validation_size=0.1, eval_every=25, sample_batch_size=256, max_sample_attempts=10,
                 constraints=None, metadata=None, n_jobs=None, random_state=None, verbose=True):
        self.encoder = encoder
        self.decoder = decoder
        self.injection = injection
        self.n_soft_tokens = n_soft_tokens
        self.n_prefix_tokens = n_prefix_tokens
        self.latent_dim = latent_dim
        self.serialization = serialization
        self.number_format = number_format
        self.latent_head = latent_head
        self.latent_head_hidden = latent_head_hidden
        self.latent_head_context = latent_head_context
        self.latent_readout = latent_readout
        self.latent_dropout = latent_dropout
        self.number_head = number_head
        self.aux_weight = aux_weight
        self.aux_steps = aux_steps
        self.aux_stop_gap = aux_stop_gap
        self.row_features = row_features
        self.column_loss = column_loss
        self.max_beta = max_beta
        self.min_beta = min_beta
        self.max_epochs = max_epochs
        self.max_time = max_time
        self.memorisation_gap = memorisation_gap
        self.privacy_sample = privacy_sample
        self.privacy_filter = privacy_filter
        self.privacy_filter_radius = privacy_filter_radius
        self.dp_epsilon = dp_epsilon
        self.dp_delta = dp_delta
        self.dp_max_grad_norm = dp_max_grad_norm
        self.decoder_adapter = decoder_adapter
        self.lora_rank = lora_rank
        self.lora_alpha = lora_alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.encoder_learning_rate = encoder_learning_rate
        self.prior = prior
        self.diffusion_steps = diffusion_steps
        self.diffusion_train_steps = diffusion_train_steps
        self.diffusion_learning_rate = diffusion_learning_rate
        self.diffusion_sigma_min = diffusion_sigma_min
        self.marginal_rows = marginal_rows
        self.temperature = temperature
        self.decoder_dtype = decoder_dtype
        self.device = device
        self.validation_size = validation_size
        self.eval_every = eval_every
        self.sample_batch_size = sample_batch_size
        self.max_sample_attempts = max_sample_attempts
        self.constraints = constraints
        self.metadata = metadata
        self.n_jobs = n_jobs
        self.random_state = random_state
        self.verbose = verbose

    # -- helpers -----------------------------------------------------------------------------------------
    def _check_params(self):
        """Every parameter against the declared table (scikit-learn's InvalidParameterError names the
        parameter, the allowed values and what was given), then the rules that tie parameters together."""
        self._validate_params()
        if self.n_jobs == 0:
            raise ValueError("n_jobs=0 runs nothing; use a positive count, -1 for all cores, or None")
        if self.number_format == "fixed" and self.serialization != "values":
            raise ValueError("number_format='fixed' needs serialization='values' (JSON has no zero-padded "
                             "numbers); use number_format='plain' with serialization='json'")
        if self.injection == "soft_prompt" and self.n_prefix_tokens + self.n_soft_tokens < 1:
            raise ValueError("soft_prompt needs at least one token")
        if self.dp_epsilon is not None and self.prior != "diffusion":
            raise ValueError(f"dp_epsilon needs prior='diffusion' (trained with DP-SGD); prior={self.prior!r} "
                             "would release the latents' covariance without noise")
        if self.dp_epsilon is not None and self.latent_head and self.latent_head_hidden and self.latent_head_context:
            raise ValueError("dp_epsilon does not support latent_head_context=True (the per-row gradients pass "
                             "through the latent head's table, which the token before does not reach)")
        if self.dp_epsilon is not None and parallel.launched():
            raise ValueError("dp_epsilon does not run under torchrun: fit with differential privacy in one process")
        for name in ("aux_weight", "max_beta", "max_time", "learning_rate", "diffusion_learning_rate", "temperature",
                     "dp_epsilon", "dp_max_grad_norm"):
            v = getattr(self, name)
            if v is not None and math.isinf(v):
                raise ValueError(f"{name} must be finite, got {v!r}")
        if self.min_beta > self.max_beta:
            raise ValueError(f"need min_beta <= max_beta, got min_beta={self.min_beta}, max_beta={self.max_beta}")
        try:
            dev = self._device()
        except (RuntimeError, ValueError) as e:
            raise ValueError(f"device={self.device!r} is not a device torch knows: {e}") from e
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device={self.device!r}, but this torch has no CUDA device (torch "
                             f"{torch.__version__}); use device='cpu' or 'auto'")

    def _readout_width(self) -> int:
        """The read-out's width: none under ``dp_epsilon`` (its stage reads the training rows outside the
        accounting, and the per-row gradients do not reach the decoder's hidden states)."""
        return 0 if self.dp_epsilon is not None else int(self.latent_readout)

    def _number_format(self) -> str:
        if self.number_format == "auto":
            return "fixed" if self.serialization == "values" else "plain"
        return self.number_format

    def _device(self) -> torch.device:
        dev = torch.device("cuda" if self.device == "auto" and torch.cuda.is_available()
                           else "cpu" if self.device == "auto" else self.device)
        if dev.type == "cuda" and dev.index is None and parallel.launched():  # torchrun: one GPU a process
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return dev

    @quiet_unless_verbose
    def _setup(self, schema: Schema, seed: int, encoder_weights: bool, n_features: int = 0):
        """Build decoder, grammar, encoder and injector (random init, or architecture only)."""
        device = self._device()
        dtype = resolve_dtype(self.decoder_dtype, device)
        self._decoder, self._dec_tok, dec_src, dec_fp = _get_decoder(self.decoder, dtype, device)
        adapter = None
        if self.decoder_adapter == "lora":  # a private copy: the shared decoder stays as pretrained
            adapter = DecoderAdapter(self._decoder, self.lora_rank, self.lora_alpha, seed=seed + 2).to(device)
            self._decoder = adapter.decoder
        self._grammar = RowGrammar(RowFormat(self.serialization, schema, self._number_format()), self._dec_tok)
        backbone, self._enc_tok, enc_src = load_backbone(self.encoder, weights=encoder_weights)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            # where the decoder runs in bf16 the hardware has it: the encoder's matmuls too (2x faster on
            # AVX512-BF16 CPUs, measured), weights and head kept in float32
            encoder = RowEncoder(backbone, self.latent_dim, n_features,
                                 autocast=torch.bfloat16 if dtype == torch.bfloat16 else None).to(device)
        injector = Injector(self.injection, self.latent_dim, self._decoder, self.n_soft_tokens,
                            self.n_prefix_tokens, seed=seed).to(device)
        head = None
        if self.latent_head:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed + 1)
                numbers = None
                if self.number_head and self._number_format() == "fixed" and NumberHead.columns_of(self._grammar):
                    numbers = NumberHead(self._grammar, self.latent_head_hidden or self.latent_dim, self.number_head)
                head = LatentLogitHead(self.latent_dim, self._grammar.n_groups, self._grammar.K,
                                       hidden=self.latent_head_hidden, context=self.latent_head_context,
                                       numbers=numbers, read_dim=self._decoder.get_input_embeddings().weight.shape[1],
                                       read_width=self._readout_width()).to(device)
        ref = {"decoder": self.decoder if self.decoder is not None else DEFAULT_DECODER, "resolved": dec_src,
               "fingerprint": dec_fp, "dtype": str(dtype).replace("torch.", "")}
        return (encoder, injector, head, adapter, ref,
                {"encoder": self.encoder or DEFAULT_ENCODER, "resolved": enc_src})

    # -- fit ---------------------------------------------------------------------------------------------
    @quiet_unless_verbose
    def fit(self, X, y=None):
        """Learn the table X (DataFrame; ``y`` is ignored). Returns self."""
        self._check_params()
        t_start = time.monotonic()
        df = check_frame(X)
        n = len(df)
        if n < MIN_ROWS:
            raise ValueError(f"need at least {MIN_ROWS} rows (training plus a validation slice), got {n}")
        layout = Layout.fit(df, self.metadata)
        user_columns, df = list(df.columns), layout.model_frame(df)  # ids and dropped columns out, types as declared
        cons = check_constraints(self.constraints, df.columns)
        hit = broken_rows(cons, df)
        if hit is not None:
            c, bad = hit
            raise ValueError(f"the training table breaks {c.describe()} in {len(bad)} rows, e.g. rows "
                             f"{df.index[bad[:10]].tolist()}; fix them or drop the constraint")
        schema = infer_schema(df, layout.kinds)
        parallel.init(self._device())
        # under torchrun every process must start from the same weights and draw the same batches
        seed = parallel.broadcast_int(int(check_random_state(self.random_state).randint(0, 2**31 - 1)))
        # Dropout and default inits draw from torch's global RNG: seed it, without disturbing the caller's.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            train_idx, val_idx = self._fit(df, schema, seed, t_start)
        self.constraints_ = [c.fitted(df) for c in cons]
        self.layout_ = layout
        self.n_features_in_ = len(user_columns)
        self.feature_names_in_ = np.asarray(user_columns, dtype=object)
        deadline = math.inf if self.max_time is None else t_start + float(self.max_time)
        if self._ledger is not None:
            self.history_["privacy_filter"] = {"why": "dp_epsilon: the filter reads the training rows outside the "
                                                      "accounting"}
            self.history_["marginal_correction"] = {"why": "dp_epsilon: the training rows' frequencies are not "
                                                           "covered by the accounting"}
        elif self.marginal_rows:
            report_s = 0.03 * float(self.max_time) if self.privacy_sample and self.max_time is not None else 0.0
            t = time.monotonic()
            self._correct_marginals(self.marginal_rows, torch.Generator().manual_seed(seed + 7), deadline - report_s)
            self.history_["seconds"]["marginal_correction"] = round(time.monotonic() - t, 1)
        if self._ledger is not None:  # the guarantee is the report: no rows were held out to compare with
            self.privacy_report_ = {"differential_privacy": self._ledger.report()}
        else:
            t = time.monotonic()
            self.privacy_report_ = self._privacy_report(df, train_idx, val_idx, deadline)
            self.history_["seconds"]["privacy_report"] = round(time.monotonic() - t, 1)
        del self._ledger
        self.fit_seconds_ = time.monotonic() - t_start
        return self

    def _privacy_report(self, df, train_idx, val_idx, deadline) -> dict | None:
        """How close ``privacy_sample`` new rows sit to the training rows, against how close unseen real rows
        (the validation rows, which no stage learnt from) sit to them. None with privacy_sample=0."""
        m = min(self.privacy_sample, len(val_idx))
        if m < 1:
            return None
        t = time.monotonic()
        gen = torch.Generator().manual_seed(self.seed_ + 5)
        rows = []
        while len(rows) < m and time.monotonic() < deadline:  # small batches: stops near the budget's end
            rows += self._sample_rows(min(64, m - len(rows)), gen)[0]
        report = {"rows": len(rows), "validation_rows": len(val_idx)}
        if self.privacy_filter_ is not None:  # the rows below passed it
            share = float(self.privacy_filter_radius)
            report["filter"] = {"mode": self.privacy_filter, "radius": share,
                                "base_rate": round(self.privacy_filter_.base_rate(share), 4),
                                "unseen_rows": self.privacy_filter_.unseen_rows}
        if not rows:
            return {**report, "note": "max_time left no time to sample rows for the check"}
        from .metrics import _dcr_matrices, _nearest_l1, closer_than_unseen

        syn, trained, unseen = build_frame(rows, self.schema_), df.iloc[train_idx.numpy()], df.iloc[val_idx.numpy()]
        x_new, x_trained, x_unseen = _dcr_matrices([syn, trained, unseen], trained)  # one space for all three
        d_new, d_unseen = _nearest_l1(x_new, x_trained), _nearest_l1(x_unseen, x_trained)
        share, interval = closer_than_unseen(d_new, d_unseen)
        return {**report, "closer_than_unseen": round(share, 4), "interval_95": [round(x, 4) for x in interval],
                "median_dcr_new": round(float(np.median(d_new)), 4),
                "median_dcr_unseen": round(float(np.median(d_unseen)), 4),
                "exact_copies": int(syn.merge(trained.drop_duplicates(), how="inner").shape[0]),
                "seconds": round(time.monotonic() - t, 1)}

    def _fit(self, df, schema, seed, t_start):
        n = len(df)
        gen = torch.Generator().manual_seed(seed)
        rows = frame_rows(df, schema)
        featurizer = RowFeaturizer.fit(schema, rows) if self.row_features else None
        encoder, injector, head, adapter, dec_ref, enc_ref = self._setup(
            schema, seed, encoder_weights=True, n_features=featurizer.n_features if featurizer else 0)
        grammar = self._grammar
        if head is not None and head.numbers is not None and self.dp_epsilon is None:
            # the values' spread from their training quantiles (the row features' grid); under DP it stays
            # linear over each column's range, which the schema already holds
            head.numbers.set_knots([[r[i] for r in rows if r[i] is not None] for i in head.numbers.columns])
        budget = math.inf if self.max_time is None else float(self.max_time)
        enc_texts, toks, states = [], [], []
        for i, r in enumerate(rows):
            if i % 64 == 0:  # long texts can make preparation alone outlast the budget: stop at half of it
                self._check_preparation(t_start, budget, i, n)
            enc_texts.append(encoder_text(schema, r))
            t, q = grammar.encode(r)
            toks.append(t)
            states.append(q)
        data = VAEData(self._enc_tok, enc_texts, toks, states, grammar.done,
                       features=featurizer.transform(rows) if featurizer else None)
        row_choices = np.array([sum(grammar.n_choices(q) > 1 for q in st) for st in states])  # real choices a row
        self._check_preparation(t_start, budget, n, n)

        ledger = None
        if self.dp_epsilon is not None:  # every row trains; the backbone is a fixed reader of the rows
            ledger = PrivacyLedger(float(self.dp_epsilon), self.dp_delta or default_delta(n), self.dp_max_grad_norm)
            encoder.backbone.requires_grad_(False)
        n_val = 0 if ledger else int(min(max(2, round(self.validation_size * n)), 256))
        perm = torch.randperm(n, generator=gen)
        val_idx, train_idx = perm[:n_val], perm[n_val:]
        # the privacy filter reads only the rows and this split: built first, its search (training rows
        # squared) spends max_time like the stages do instead of running past it
        flt, filter_s = None, None
        if ledger is None and self.privacy_filter is not None:
            t = time.monotonic()
            flt = NearestRowFilter.fit(schema, [rows[i] for i in train_idx.tolist()],
                                       [rows[i] for i in val_idx.tolist()])
            filter_s = time.monotonic() - t
        dp_diffusion_steps = max(1, self.diffusion_train_steps // 10)
        if ledger:
            n_aux = int(self.aux_steps) if self.latent_head and self.aux_weight else 0
            ledger.plan({"vae": (min(self.batch_size / n, 1.0),
                                 self.max_epochs * math.ceil(n / self.batch_size) * (1 + n_aux)),
                         "diffusion": (min(DP_DIFFUSION_BATCH, n / 2) / n, dp_diffusion_steps)})
        # training rows scored like the validation rows, for the memorisation gap: at most 64, since each
        # evaluation of them costs decoder passes (own stream: the batches are the same with or without it)
        probe_idx = None
        if n_val >= MIN_PROBE_ROWS:
            pick = torch.randperm(len(train_idx), generator=torch.Generator().manual_seed(seed + 4))
            probe_idx = train_idx[pick[:min(n_val, PROBE_ROWS)]].tolist()
        # Reserve what the diffusion stage needs (timed as the VAE stage runs, at most 40 % of the budget) and
        # the encoding of every row, so a tight budget still trains the prior instead of leaving it untrained.
        prior_reserve, reserve, timed_at = None, 0.0, -math.inf  # reserve: the latest timing's
        if self.max_time is not None and self.prior == "diffusion":

            def prior_reserve():
                """Seconds the prior's steps need, timed before the VAE and again at its evaluations (at most
                every RETIME_S seconds), since a process's first steps run slower (x1.25: the load can change
                between the timing, a median step, and the stage)."""
                nonlocal reserve, timed_at
                if time.monotonic() - timed_at < RETIME_S:
                    return reserve
                timed_at = time.monotonic()
                if ledger:
                    steps, step_s = dp_diffusion_steps, time_diffusion_step(
                        self.latent_dim, n, round(ledger.planned["diffusion"][0] * n), trials=2, private=True)
                else:
                    steps, step_s = self.diffusion_train_steps, time_diffusion_step(self.latent_dim, n)
                reserve = min(PRIOR_MARGIN * steps * step_s, 0.4 * budget)
                return reserve
        check_s = 0.03 * budget if self.privacy_sample and n_val and math.isfinite(budget) else 0.0  # privacy_report_
        cat_cols = schema.categorical
        if self.marginal_rows and head is not None and cat_cols and not ledger and math.isfinite(budget):
            check_s += 0.04 * budget  # the marginal correction's rows, written before the privacy report
        # the read-out's stage comes after the prior and passes its rows through the decoder once per draw:
        # the VAE stage holds their time back at its own measured rate per row (the stage trims its rows to
        # fit whatever is left, so a low estimate costs epochs, never the budget)
        readout_keep = readout_rows = 0
        if head is not None and head.reader is not None:  # the training rows that stage holds, counted once
            width = self._decoder.get_output_embeddings().weight.shape[1]
            readout_keep = self._readout_keep(len(grammar.tables.vocab), width, len(train_idx),
                                              float(row_choices[train_idx.numpy()].mean()))
            if math.isfinite(budget) and n_val >= MIN_PROBE_ROWS:
                readout_rows = readout_keep * READOUT_DRAWS + n_val
        vae_deadline = t_start + 0.97 * budget - 0.02 * budget - check_s  # less the prior's reserve, held back
        history = {"vae": [], "diffusion": [], "stopped": {}, "seconds": {}}
        # each stage's seconds, so a budget's split between stages can be checked against what they took
        mark = t_start
        if filter_s is not None:  # its own entry, out of the preparation's
            history["seconds"]["privacy_filter"] = round(filter_s, 1)
            mark += filter_s

        def lap(stage):
            nonlocal mark
            now = time.monotonic()
            history["seconds"][stage] = round(now - mark, 1)
            mark = now

        lap("preparation")
        vae = RowVAE(encoder, RowModel(self._decoder, injector, grammar, head, adapter), column_loss=self.column_loss,
                     aux_weight=float(self.aux_weight))
        history["vae"], history["stopped"]["vae"] = train_vae(
            vae, data, train_idx, val_idx, max_epochs=self.max_epochs,
            deadline=vae_deadline, batch_size=self.batch_size, learning_rate=self.learning_rate,
            encoder_learning_rate=self.encoder_learning_rate, max_beta=self.max_beta, min_beta=self.min_beta,
            eval_every=self.eval_every, aux_steps=int(self.aux_steps), aux_stop_gap=self.aux_stop_gap,
            probe_idx=probe_idx,
            memorisation_gap=self.memorisation_gap if probe_idx is not None else None,
            latent_dropout=float(self.latent_dropout) if self.latent_head else 0.0,
            reserve_rows=readout_rows, reserve_margin=READOUT_MARGIN, hold_back=prior_reserve, dp=ledger,
            generator=gen, verbose=self.verbose)
        lap("vae")
        # what the VAE stage held back for the read-out, at its slowest validation pass per row
        row_s = max((r["val_s"] / n_val for r in history["vae"] if "val_s" in r), default=0.0)
        readout_s = READOUT_MARGIN * readout_rows * row_s
        # what the VAE left to the stages after it, beside what they took (history["seconds"])
        history["reserved_s"] = {"prior": round(reserve, 1), "readout": round(readout_s, 1),
                                 "checks": round(check_s, 1)}

        # the prior learns the training slice only: the validation rows stay unseen by every stage, so
        # privacy_report_ can compare the model's rows with rows it never learnt from
        mu = self._encode_means(encoder, data, train_idx.tolist())
        # under DP the latents' mean would be released without noise: the KL term centres them near 0 anyway
        self.latent_mean_ = torch.zeros(mu.shape[1]) if ledger else mu.mean(0)
        zn = (mu - self.latent_mean_) / 2  # TabSyn/DiffLM normalisation
        if self.prior == "diffusion":
            planned = dp_diffusion_steps if ledger else self.diffusion_train_steps
            self.denoiser_, history["diffusion"] = train_diffusion(
                zn, steps=planned, deadline=t_start + 0.98 * budget - check_s - readout_s, generator=gen,
                lr=self.diffusion_learning_rate, dp=ledger, verbose=self.verbose, device=self._device())
            ran = history["diffusion"][-1]["step"] + 1 if history["diffusion"] else 0
            history["stopped"]["diffusion"] = "steps" if ran >= planned else "time budget"
            if ran < planned:
                warnings.warn(f"the time budget left the diffusion prior {ran} of {planned} "
                              "training steps; raise max_time or lower diffusion_train_steps", UserWarning,
                              stacklevel=3)
        else:
            self.denoiser_ = None
            self.latent_cov_ = torch.cov(zn.T) + 1e-6 * torch.eye(zn.shape[1])
        lap("prior")
        # the validation rows' latents in the prior's units, encoded once for the calibration and the read-out
        zn_val = None if ledger or len(val_idx) < MIN_PROBE_ROWS else \
            (self._encode_means(encoder, data, val_idx.tolist()) - self.latent_mean_) / 2
        self.diffusion_sigma_min_, history["prior_calibration"] = self._calibrate_prior(
            zn, zn_val, len(val_idx), seed, deadline=t_start + 0.98 * budget - check_s - readout_s,
            private=ledger is not None)
        lap("calibration")
        if head is not None and head.reader is not None:
            history["readout"], history["stopped"]["readout"] = self._train_readout(
                vae.rows, data, zn, zn_val, train_idx, val_idx, readout_keep, seed,
                deadline=t_start + 0.98 * budget - check_s)
            lap("readout")
        # the training rows' categorical choices, counted once: the marginal correction's target (under DP
        # the accounting does not cover them, so none are kept)
        self.choice_counts_ = None if ledger or head is None else choice_counts(
            grammar, [toks[i] for i in train_idx.tolist()], [states[i] for i in train_idx.tolist()], cat_cols)
        self.choice_bias_, self.choice_bias_at_ = None, None
        self.encoder_ = encoder
        self.injector_ = injector
        self.latent_head_ = head
        self.decoder_adapter_ = adapter
        self.featurizer_ = featurizer
        self.schema_ = schema
        self.decoder_ref_ = dec_ref
        self.encoder_ref_ = enc_ref
        self.history_ = history
        self.privacy_filter_ = flt
        self.seed_ = seed
        self.tokens_per_row_ = float(np.mean([len(t) for t in toks]))
        self.choices_per_row_ = float(row_choices.mean())
        self._sample_gen = torch.Generator().manual_seed(seed + 1)
        self._ledger = ledger
        return train_idx, val_idx

    def _sampler_sigma(self) -> float | None:
        """The noise level the prior's sampler stops at now (None for the Gaussian prior)."""
        if self.denoiser_ is None:
            return None
        return float(self.diffusion_sigma_min_ if self.diffusion_sigma_min == "auto" else self.diffusion_sigma_min)

    def _sampler_setting(self) -> dict:
        """What the marginal correction depends on: where the prior's sampler stops, and the temperature."""
        return {"sigma_min": self._sampler_sigma(), "temperature": float(self.temperature)}

    def _active_choice_bias(self, warn: bool = False) -> torch.Tensor | None:
        """The marginal correction, if it was estimated for the sampler as it stands now and ``marginal_rows``
        is not 0 (None otherwise; ``warn``: say so when one exists for another setting)."""
        bias = getattr(self, "choice_bias_", None)
        if bias is None or not self.marginal_rows:
            return None
        now, then = self._sampler_setting(), self.choice_bias_at_
        if all(now[k] == then[k] or (now[k] is not None and then[k] is not None and math.isclose(now[k], then[k]))
               for k in now):
            return bias
        if warn:
            warnings.warn(f"the categorical columns' marginal correction was estimated for {then}, not {now}: "
                          "sampling without it; call correct_marginals() to estimate one for this setting",
                          UserWarning, stacklevel=4)
        return None

    @quiet_unless_verbose
    def correct_marginals(self, n_rows: int = 1000, X=None, random_state=None) -> "DiffLMSynthesizer":
        """Estimate the marginal correction (see ``marginal_rows``) for the sampler as it stands now.

        The model writes ``n_rows`` rows in two rounds (the second with the first round's correction
        applied) and compares each categorical choice's frequency with the training rows'. Sampling uses the
        result while the sampler's stopping point and temperature stay where they were; call this again
        after ``set_params(diffusion_sigma_min=...)`` or another ``temperature``. ``X``: rows to take the
        target frequencies from instead of the training rows' counts stored at fit (needed for models saved
        before version 0.14). Returns self; ``history_["marginal_correction"]`` records what was done.
        """
        check_is_fitted(self)
        if not isinstance(n_rows, numbers.Integral) or n_rows < 2:
            raise ValueError(f"n_rows must be an integer of at least 2, got {n_rows!r}")
        if X is not None:
            encoded = [self._grammar.encode(r) for r in self._rows_of(X)]
            self.choice_counts_ = choice_counts(self._grammar, [t for t, _ in encoded], [q for _, q in encoded],
                                                self.schema_.categorical)
        elif getattr(self, "choice_counts_", None) is None:
            raise ValueError("this model keeps no training frequencies (fitted with dp_epsilon, without the latent "
                             "head, or saved before version 0.14): pass the training rows as X")
        gen = torch.Generator().manual_seed(int(check_random_state(random_state).randint(0, 2**31 - 1)))
        self._correct_marginals(n_rows, gen, math.inf)
        return self

    def _correct_marginals(self, n_rows: int, gen: torch.Generator, deadline: float) -> None:
        """Two rounds of n_rows / 2 rows each: the choice frequencies under the prior's draws, then the same
        with the first round's logits added; their log ratios to the training frequencies add up to
        ``choice_bias_`` (kept for the sampler as it stands, ``choice_bias_at_``)."""
        t0 = time.monotonic()
        self.choice_bias_, self.choice_bias_at_ = None, None
        record = self.history_.setdefault("marginal_correction", {})
        record.clear()
        counts = getattr(self, "choice_counts_", None)
        if self.latent_head_ is None or counts is None or not counts.any():
            record["why"] = "no categorical choices to correct" if self.latent_head_ is not None and counts is not None \
                else "needs the latent logit head's training frequencies"
            return
        if self.temperature <= 0:
            record["why"] = "temperature=0 writes each latent's most likely row: no frequencies to move"
            return
        model = self.row_model()
        bias, written = torch.zeros_like(counts), 0
        for _ in range(2):  # the second round adds what the first left (see marginal_bias)
            stats, done = torch.zeros_like(counts), 0
            while done < n_rows // 2 and time.monotonic() < deadline:
                k = min(self.sample_batch_size, n_rows // 2 - done)
                model.generate(self.sample_latents(k, generator=gen), self.temperature, generator=gen,
                               choice_bias=bias if bias.any() else None, choice_stats=stats)
                done += k
            written += done
            if done < MIN_CORRECTION_ROWS:  # too few rows to tell a column's frequencies from noise
                break
            bias = bias + marginal_bias(counts, stats) * self.temperature
        record["rows"] = written
        if not bias.any():
            record["why"] = "max_time left too few rows" if written < n_rows else "no choice's frequency moved"
            return
        self.choice_bias_, self.choice_bias_at_ = bias, self._sampler_setting()
        shifted = bias[bias != 0].abs()
        groups = bias.any(1).nonzero().flatten().numpy()  # a column's groups start at its group offset
        cols = sorted(set(np.searchsorted(self._grammar.group_offsets, groups, side="right") - 1))
        record.update({**self.choice_bias_at_, "columns": [self.schema_.columns[c].name for c in cols],
                       "mean_shift": round(float(shifted.mean()), 4), "max_shift": round(float(shifted.max()), 4),
                       "seconds": round(time.monotonic() - t0, 1)})

    def _train_readout(self, model: RowModel, data: VAEData, zn: torch.Tensor, zn_val: torch.Tensor | None,
                       train_idx, val_idx, keep: int, seed: int, deadline: float) -> tuple[list, str]:
        """The read-out's own stage (:func:`~tabdifflm.training.train_readout`): each training and validation
        row paired with the latent the sampler, as it now stands, returns near the row's own. zn [N, D] and
        zn_val [M, D] (None with too few validation rows): the rows' latents in the prior's units; keep: how
        many training rows, drawn at random, the stage holds (:meth:`_readout_keep`)."""
        if zn_val is None:  # nothing to choose the epoch on: the read-out keeps the VAE's state
            return [], f"{len(val_idx)} validation rows, fewer than {MIN_PROBE_ROWS}"
        gen = torch.Generator().manual_seed(seed + 8)
        sigma = self._sampler_sigma()
        pick = torch.randperm(len(train_idx), generator=gen)[:keep]  # zn's rows are train_idx's, in order

        def near(z):  # the sampler's latent near each of z [N, D] (prior units), in the VAE's units
            out = z if sigma is None else blend_latents(self.denoiser_, z, sigma, gen)
            return out * 2 + self.latent_mean_

        draws = [near(zn[pick]) for _ in range(READOUT_DRAWS)]
        return train_readout(model, data, train_idx[pick].tolist(), draws, val_idx.tolist(), near(zn_val),
                             deadline=deadline, generator=gen, verbose=self.verbose)

    @staticmethod
    def _readout_keep(K: int, H: int, n_train: int, per_row: float) -> int:
        """How many of ``n_train`` training rows the read-out's stage holds, each written from READOUT_DRAWS
        latents. K: the grammar's tokens, H: the decoder's hidden width; per_row: the training rows' mean count
        of real choices."""
        # the hidden states and logits of every choice are held at once: at most READOUT_CHOICES of them, and
        # at most READOUT_BYTES (a sub-vocabulary of thousands of category tokens makes each one large)
        cap = min(READOUT_CHOICES, int(READOUT_BYTES // (4 * (H + K))))
        # Adult: 32 choices a row, so all 1,800 training rows are kept
        return min(n_train, max(1, int(cap // (max(per_row, 1.0) * READOUT_DRAWS))))

    def _calibrate_prior(self, zn: torch.Tensor, zn_val: torch.Tensor | None, n_val: int, seed: int,
                         deadline: float, private: bool) -> tuple:
        """The sampler's last noise level for ``diffusion_sigma_min="auto"`` -> (sigma or None, record).

        zn [N, D]: the training latents the prior learnt, in its units; zn_val [n_val, D] (None with fewer than
        MIN_PROBE_ROWS or under DP): the validation rows' latents, the unseen rows that draws are compared
        with (:func:`calibrate_sigma_min`)."""
        if self.denoiser_ is None:
            return None, {"why": "prior='gaussian' has no sampler to stop"}
        if private:  # the distances read the training latents outside the DP accounting
            return SIGMA_MIN, {"sigma_min": SIGMA_MIN, "why": "dp_epsilon: not calibrated on the rows"}
        if zn_val is None:
            return SIGMA_MIN, {"sigma_min": SIGMA_MIN, "why": f"{n_val} validation rows, fewer than "
                                                              f"{MIN_PROBE_ROWS}: too few to compare with"}
        sigma, tried = calibrate_sigma_min(self.denoiser_, zn, zn_val, steps=self.diffusion_steps, seed=seed + 6,
                                           deadline=deadline)
        last = tried[-1]
        why = ("the draws sit no nearer the training latents than the validation rows' latents (95 % confidence)"
               if last["upper_95"] <= 0.5 else
               f"the grid's end (stopping later costs more fidelity than it moves the rows), or the time budget, "
               f"came first (share {last['closer_than_unseen']}, upper bound {last['upper_95']})")
        return sigma, {"sigma_min": sigma, "validation_rows": n_val, "tried": tried, "why": why}

    @staticmethod
    def _check_preparation(t_start: float, budget: float, done: int, n: int) -> None:
        """Raise once loading the models and preparing the rows has used half of ``max_time``: the rest is
        the least that training needs, and an overrun would break the budget the user set."""
        spent = time.monotonic() - t_start
        if spent <= 0.5 * budget:
            return
        need = spent if done >= n else spent * n / max(done, 1)
        raise ValueError(f"max_time={budget:g} s is too short for this table: loading the models and preparing "
                         f"{done} of {n} rows took {spent:.1f} s, more than half the budget (all rows: about "
                         f"{need:.0f} s). Raise max_time to at least {max(4 * need, budget + 1):.0f} s, or "
                         "shorten long text columns")

    @torch.no_grad()
    def _encode_means(self, encoder, data: VAEData, idx: list, batch: int = 64) -> torch.Tensor:
        """Posterior means of rows ``idx`` of ``data`` -> [len(idx), latent_dim]."""
        dev = mu_dev(encoder)
        out = []
        for s in range(0, len(idx), batch):
            ids, am, feats, *_ = data.batch(idx[s:s + batch])
            out.append(encoder(ids.to(dev), am.to(dev), feats)[0].float().cpu())
        return torch.cat(out)

    # -- sample ------------------------------------------------------------------------------------------
    def sample_latents(self, n: int, generator=None) -> torch.Tensor:
        """Draw n latents from the fitted prior. Returns [n, latent_dim] (VAE latent scale)."""
        check_is_fitted(self)
        if self.denoiser_ is not None:
            zn = sample_heun(self.denoiser_, n, self.latent_mean_.shape[0], steps=self.diffusion_steps,
                             sigma_min=self._sampler_sigma(), generator=generator)
        else:
            L = torch.linalg.cholesky(self.latent_cov_)
            zn = torch.randn(n, L.shape[0], generator=generator) @ L.T
        return zn.cpu() * 2 + self.latent_mean_

    def _rows_of(self, X) -> list[list]:
        df = self.layout_.model_frame(check_frame(X))
        missing = [c for c in self.schema_.names if c not in df.columns]
        if missing:
            raise ValueError(f"X lacks the training columns {missing}")
        return frame_rows(df, self.schema_)

    def filter_rows(self, X, mode=None) -> pd.DataFrame:
        """The rows of X that the privacy filter keeps, in order (see ``privacy_filter``).

        X: a DataFrame with the training columns, e.g. rows sampled with ``privacy_filter=None``, by
        :meth:`sample_near`, or by an earlier version. ``mode``: "match" or "strict" (default: the estimator's
        ``privacy_filter``, which must not be None). Rows inside a training row's neighbourhood are turned
        away, as :meth:`sample` does: all of them ("strict"), or enough that the share kept inside is at most
        the unseen rows' base rate ("match"), at ``privacy_filter_radius``. Returns a subset of X with its
        index.
        """
        check_is_fitted(self)
        mode = self.privacy_filter if mode is None else mode
        if mode not in FILTER_MODES:
            raise ValueError(f"mode must be 'match' or 'strict' (or privacy_filter set to one), got {mode!r}")
        if getattr(self, "privacy_filter_", None) is None:
            raise ValueError("this model has no fitted privacy filter (fitted with privacy_filter=None or under "
                             "dp_epsilon, or saved before version 0.18)")
        f, quota, share = self._row_filter(mode)
        inside = f.inside(self._rows_of(X), share).tolist()
        return X[np.array([quota.admit(near) for near in inside], dtype=bool)]

    @quiet_unless_verbose
    def encode(self, X) -> np.ndarray:
        """Posterior means of the rows of X (a DataFrame with the training columns) -> [n, latent_dim]."""
        check_is_fitted(self)
        rows = self._rows_of(X)
        texts = [encoder_text(self.schema_, r) for r in rows]
        feats = self.featurizer_.transform(rows) if self.featurizer_ is not None else None
        dev = mu_dev(self.encoder_)
        out = []
        with torch.no_grad():
            for s in range(0, len(texts), 64):
                enc = self._enc_tok(texts[s:s + 64], padding=True, truncation=True, max_length=256,
                                    return_tensors="pt")
                f = None if feats is None else feats[s:s + 64]
                out.append(self.encoder_(enc["input_ids"].to(dev), enc["attention_mask"].to(dev), f)[0].float().cpu())
        return torch.cat(out).numpy()

    def row_model(self) -> RowModel:
        """The fitted decoding side p(row | z) as one ``nn.Module``: injector, latent head, frozen decoder and
        row grammar. ``row_model().generate(z)`` writes token rows from latents [n, latent_dim], and
        ``row_model().automaton.decode`` reads them; :meth:`decode` does both."""
        check_is_fitted(self)
        return RowModel(self._decoder, self.injector_, self._grammar, self.latent_head_)

    def _conditioned_model(self, conds, rules=()) -> tuple[RowModel, list]:
        """The row model with its grammar narrowed to ``conds`` and the inequalities of ``rules`` it can hold
        linked in (the unrestricted one without either), and the rules that grammar holds."""
        grammar, held = self._narrowed_grammar(conds, rules)
        if grammar is self._grammar:
            return self.row_model(), held
        return RowModel(self._decoder, self.injector_, grammar, self.latent_head_), held

    @quiet_unless_verbose
    def decode(self, Z, temperature=None, random_state=None, conditions=None) -> pd.DataFrame:
        """Rows written by the decoder from latents Z [n, latent_dim] (one row per latent, in order).

        ``temperature`` defaults to the estimator's (0 = greedy). ``conditions`` (as in :meth:`sample`)
        narrow the grammar, so every row meets them; the latents are used as given. A row that breaks the
        schema (a date that does not exist) is written again from the same latent, at most
        ``max_sample_attempts`` times.
        """
        check_is_fitted(self)
        conds = parse_conditions(conditions, self.schema_)
        z = torch.as_tensor(np.asarray(Z, dtype=np.float32))
        if z.ndim != 2 or z.shape[1] != self.latent_mean_.shape[0]:
            raise ValueError(f"Z must have shape [n, {self.latent_mean_.shape[0]}], got {tuple(z.shape)}")
        if not torch.isfinite(z).all():
            raise ValueError("Z contains NaN or infinite values")
        temp = self.temperature if temperature is None else float(temperature)
        gen = torch.Generator().manual_seed(int(check_random_state(random_state).randint(0, 2**31 - 1)))
        model, _ = self._conditioned_model(conds)
        grammar = model.automaton
        rows: list = [None] * len(z)
        todo = list(range(len(z)))
        for _ in range(self.max_sample_attempts):
            for s in range(0, len(todo), self.sample_batch_size):
                part = todo[s:s + self.sample_batch_size]
                toks = model.generate(z[part], temp, generator=gen)
                for i, t in zip(part, toks):
                    try:
                        row = grammar.decode(t)
                    except InvalidValue:
                        continue
                    # a date format's resolution can straddle a bound: such a row is written again
                    if all(c.holds(row[c.column], self.schema_.columns[c.column]) for c in conds):
                        rows[i] = row
            todo = [i for i in todo if rows[i] is None]
            if not todo:
                return self.layout_.restore(build_frame(rows, self.schema_))
        raise RuntimeError(f"{len(todo)} latents gave no valid row in {self.max_sample_attempts} attempts")

    def sample_near(self, X, n: int = 20, scale: float = 0.5, temperature=None, random_state=None) -> pd.DataFrame:
        """Variations of each row of X: ``n`` rows written from latents around the row's own.

        Each latent is the row's posterior mean plus ``scale`` x Gaussian noise in the prior's normalised
        units (``scale=1`` moves a latent about as far as the spread of the training rows' latents; 0 keeps
        it). Returns ``n`` rows per row of X, in order, indexed by the row of X they vary.
        """
        check_is_fitted(self)
        if not isinstance(n, numbers.Integral) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        if not (isinstance(scale, numbers.Real) and math.isfinite(scale) and scale >= 0):
            raise ValueError(f"scale must be a finite number >= 0, got {scale!r}")
        df = check_frame(X)
        z = torch.as_tensor(self.encode(df)).repeat_interleave(int(n), 0)  # [len(X) * n, D]
        rng = check_random_state(random_state)
        gen = torch.Generator().manual_seed(int(rng.randint(0, 2**31 - 1)))
        z = z + 2 * float(scale) * torch.randn(z.shape, generator=gen)  # 2: the prior's normalisation
        out = self.decode(z.numpy(), temperature=temperature, random_state=rng)
        out.index = df.index.repeat(int(n))
        return out

    def interpolate(self, a, b, steps: int = 8, temperature=0.0, random_state=None) -> pd.DataFrame:
        """Rows along the straight line between the latents of two rows (one-row DataFrames ``a`` and ``b``):
        ``steps`` rows, the first written from a's latent and the last from b's. Greedy by default
        (``temperature=0``), so the path changes only where the latent does."""
        check_is_fitted(self)
        if not isinstance(steps, numbers.Integral) or steps < 2:
            raise ValueError(f"steps must be an integer >= 2, got {steps!r}")
        za, zb = (torch.as_tensor(self.encode(check_frame(r))) for r in (a, b))
        if len(za) != 1 or len(zb) != 1:
            raise ValueError(f"a and b must be one row each, got {len(za)} and {len(zb)}")
        t = torch.linspace(0, 1, int(steps))[:, None]
        return self.decode(((1 - t) * za + t * zb).numpy(), temperature=temperature, random_state=random_state)

    @quiet_unless_verbose
    def column_nll(self, X, Z=None) -> pd.DataFrame:
        """NLL in nats of each cell of X under the decoder given latents Z (default: X's own posterior means).

        Returns a DataFrame [n, columns]. Comparing it with the NLL under other rows' latents tells how much
        of each column the latent carries.
        """
        check_is_fitted(self)
        rows = self._rows_of(X)
        z = torch.as_tensor(self.encode(X) if Z is None else np.asarray(Z, dtype=np.float32))
        if len(z) != len(rows):
            raise ValueError(f"Z has {len(z)} latents for {len(rows)} rows")
        enc = []
        for i, r in enumerate(rows):
            try:
                enc.append(self._grammar.encode(r))
            except ValueError as e:
                raise ValueError(f"row {i} of X cannot be written in the fitted schema: {e}") from e
        out = np.zeros((len(rows), len(self.schema_)))
        model = self.row_model()
        dev = model.device
        with torch.no_grad():
            for s in range(0, len(rows), 64):
                part = enc[s:s + 64]
                toks, sts, valid = pad_batch([e[0] for e in part], [e[1] for e in part], self._grammar.done)
                nll, r, c = model(z[s:s + 64].to(dev), toks, sts, valid)
                np.add.at(out, (r.cpu().numpy() + s, c.cpu().numpy()), nll.double().cpu().numpy())
        return pd.DataFrame(out, columns=self.schema_.names, index=getattr(X, "index", None))

    @quiet_unless_verbose
    def sample(self, n_samples, random_state=None, conditions=None) -> pd.DataFrame:
        """Generate exactly ``n_samples`` valid rows with the training columns, order and dtypes.

        ``conditions`` {column: value, list/set of values, or (low, high) with None for an open end} holds
        in every row: the row grammar is narrowed so that only allowed values can be written, and the
        latents are drawn from the prior reweighted by how likely the latent head finds the conditions
        (sampling-importance-resampling on cheap head-only rows), so the other columns follow the
        condition instead of sitting beside a forced value. Every condition is checked before any work.

        Rows whose text breaks the schema (a date that does not exist, a number outside the training range)
        are generated again, at most ``max_sample_attempts`` rounds. ``random_state`` overrides the
        estimator's sampling stream for this call. Under torchrun each process writes its share of the rows
        from its own seed stream and every process returns all of them, in rank order (so the rows differ
        from a one-process run with the same seed).
        """
        check_is_fitted(self)
        self._check_params()  # set_params after fit (temperature=nan, ...) is caught here, not mid-sampling
        if not isinstance(n_samples, numbers.Integral) or isinstance(n_samples, bool):
            raise TypeError(f"n_samples must be an integer, got {type(n_samples).__name__}")
        if n_samples < 1:
            raise ValueError(f"n_samples must be at least 1, got {n_samples}")
        n = int(n_samples)
        conds = parse_conditions(conditions, self.schema_)
        self._row_filter()  # a filter asked for but never fitted is named before any work
        gen = self._sample_gen if random_state is None else torch.Generator().manual_seed(
            int(check_random_state(random_state).randint(0, 2**31 - 1)))
        world, rank = parallel.world(), parallel.rank()
        here = n
        if world > 1:  # under torchrun: each process writes its share from its own seed stream
            base = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))  # the same on every process
            gen = torch.Generator().manual_seed((base + 1_000_003 * rank) % 2**63)
            here = n // world + (rank < n % world)
        hits = []  # per batch: share of the prior's head-only rows that met the conditions
        info = {"constraints_in_grammar": []}
        got, generated, errors, first_round_valid = (self._sample_rows(here, gen, conds, hits, info) if here
                                                     else ([], 0, {}, 1.0))
        if world > 1:  # every process gets every row, in rank order
            got = parallel.all_gather(got)
            generated = int(parallel.all_sum([generated])[0])
            first_round_valid = parallel.all_sum([first_round_valid])[0] / world
            merged = {}
            for part in parallel.all_gather([errors]):
                for k, v in part.items():
                    merged[k] = merged.get(k, 0) + v
            errors = merged
        self.last_sample_stats_ = {"requested": n, "generated": generated, "valid": len(got),
                                   "first_try_valid_share": first_round_valid, "invalid_by_reason": errors,
                                   "processes": world, "rows_this_process": here,
                                   "constraint_resampled_share": (errors.get("constraints", 0) / generated
                                                                  if generated else 0.0),
                                   "constraints_in_grammar": info["constraints_in_grammar"],
                                   "privacy_filter_share": (errors.get("privacy filter", 0) / generated
                                                            if generated else 0.0)}
        if conds:  # share of prior rows that meet the conditions, as the latent head sees it
            self.last_sample_stats_["condition_share_in_prior"] = (
                float(np.mean(hits)) if hits else None)
        if len(got) < n:
            raise RuntimeError(f"only {len(got)} of {n} rows were valid after {self.max_sample_attempts} rounds "
                               f"({generated} generated); invalid values by column: {errors}")
        return self.layout_.restore(build_frame(got, self.schema_))

    def _row_filter(self, mode=None):
        """(filter, a fresh quota, radius share) where :meth:`sample` screens its rows (``privacy_filter``, or
        ``mode`` given), else None."""
        mode = self.privacy_filter if mode is None else mode
        if mode is None or "privacy_filter" in self.history_:  # off, or never built (DP: history says)
            return None
        f = getattr(self, "privacy_filter_", None)
        if f is None:
            raise ValueError(f"privacy_filter={self.privacy_filter!r}, but this model has no fitted privacy filter (it "
                             "was fitted with privacy_filter=None, or saved before version 0.18): set_params("
                             "privacy_filter=None) samples without one; fit again to build one")
        share = float(self.privacy_filter_radius)
        return f, Quota(f.base_rate(share) if mode == "match" else 0.0), share

    def _sample_rows(self, n: int, gen: torch.Generator, conds=(), hits=None, info=None):
        """n valid rows (schema order), with (rows generated, invalid counts by reason, first round's valid share).
        ``info["constraints_in_grammar"]`` gets the rules the grammar holds (the others are resampled)."""
        hits = [] if hits is None else hits
        screen = self._row_filter()
        base = self.row_model()  # unrestricted: what the latent guidance scores with
        rules = self._rules()
        conds = list(conds) + self._sign_conditions({c.column for c in conds}, rules)
        model, held = self._conditioned_model(conds, rules)
        grammar = model.automaton
        if info is not None:
            info["constraints_in_grammar"] = [c.describe() for c in held]
        cols = self.schema_.columns
        bias = self._active_choice_bias(warn=True)
        got, generated, errors = [], 0, {}
        first_round_valid = None
        bar = tqdm(total=n, desc="sample", disable=not self.verbose or not parallel.is_main(), dynamic_ncols=True)
        for attempt in range(self.max_sample_attempts):
            need = n - len(got)
            m = need if attempt == 0 else min(max(need * 2, 8), need + 4 * self.sample_batch_size)
            round_valid = 0
            for s in range(0, m, self.sample_batch_size):
                # latents a batch at a time: the first rows come at once and memory stays flat for any n
                k = min(self.sample_batch_size, m - s)
                z = self._guided_latents(base, k, conds, gen, hits) if conds else self.sample_latents(k, generator=gen)
                toks = model.generate(z, self.temperature, generator=gen, choice_bias=bias)
                rows = []
                for t in toks:
                    generated += 1
                    try:
                        row = grammar.decode(t)
                    except InvalidValue as e:
                        key = str(e).split(":")[0]
                        errors[key] = errors.get(key, 0) + 1
                        continue
                    broken = next((c for c in conds if not c.holds(row[c.column], cols[c.column])), None)
                    if broken is not None:  # only where a date format's resolution straddles a bound
                        key = f"condition {broken.describe()}"
                        errors[key] = errors.get(key, 0) + 1
                        continue
                    rows.append(row)
                if rules and rows:  # rules the grammar does not hold: rows that break one are written again
                    ok = self._rule_abiding(rows, rules)
                    if not ok.all():
                        errors["constraints"] = errors.get("constraints", 0) + int((~ok).sum())
                        rows = [r for r, keep in zip(rows, ok) if keep]
                inside = screen[0].inside(rows, screen[2]).tolist() if screen is not None else [False] * len(rows)
                for row, near in zip(rows, inside):
                    round_valid += 1
                    if len(got) < n:
                        if screen is not None and not screen[1].admit(near):  # written again, as broken rows are
                            errors["privacy filter"] = errors.get("privacy filter", 0) + 1
                            continue
                        got.append(row)
                        bar.update(1)
            if attempt == 0:
                first_round_valid = round_valid / m
            if len(got) >= n:
                break
        bar.close()
        return got, generated, errors, first_round_valid

    @quiet_unless_verbose
    def sample_remaining_columns(self, known, random_state=None, pool: int = 512,
                                 never_missing: bool = True) -> pd.DataFrame:
        """Fill the missing cells of ``known``: one row per row, its non-missing cells kept as they are.

        ``known`` is a DataFrame with some or all of the training columns (absent ones are filled whole).
        For each batch of rows, ``pool`` latents are drawn from the prior, and each row picks one with
        probability proportional to the latent head's likelihood of its known cells (sampling-importance-
        resampling); the decoder then writes the row with the known values prescribed, so the filled cells
        follow both the latent and the values written before them. A known value the model cannot write
        (a category never seen, a number outside the training range) is kept in the output but not shown
        to the model; ``last_sample_stats_["known_cells_not_shown"]`` counts them. ``never_missing``
        (default) fills every cell with a value; False lets the model write "missing" where it learnt to.
        Returns a DataFrame with the training columns and dtypes and ``known``'s index.
        """
        check_is_fitted(self)
        user = check_frame(known)
        extra = [c for c in user.columns if c not in set(self.feature_names_in_)]
        if extra:
            raise ValueError(f"known has columns the model was not fitted on: {extra}")
        df = self.layout_.model_frame(user)  # key and dropped columns are passed through, not modelled
        if not isinstance(pool, numbers.Integral) or isinstance(pool, bool) or pool < 1:
            raise ValueError(f"pool must be a positive integer, got {pool!r}")
        schema, grammar = self.schema_, self._grammar
        model = base = self.row_model()  # base: unrestricted, what the latent choice scores with
        if never_missing:
            grammar = without_missing(grammar, self._dec_tok)
            model = RowModel(self._decoder, self.injector_, grammar, self.latent_head_)
        full = pd.DataFrame(index=df.index)
        for c in schema.columns:  # absent columns as typed all-missing ones
            if c.name in df.columns:
                full[c.name] = df[c.name]
            elif c.kind == "datetime":
                full[c.name] = pd.Series(pd.NaT, index=df.index, dtype=f"datetime64[ns{', ' + c.tz if c.tz else ''}]")
            else:
                full[c.name] = pd.Series(None if c.kind == "categorical" else np.nan, index=df.index,
                                         dtype=object if c.kind == "categorical" else float)
        rows = frame_rows(full, schema)
        known_mask = full.notna().to_numpy()  # [n, C]
        g = model.grammar
        C, W = len(schema.columns), max(grammar._value_len(a) for a in grammar.cols) + 1
        fixed = torch.full((len(rows), C, W), -1, dtype=torch.long)
        shown = np.zeros_like(known_mask)
        anchors = []  # each row with placeholders in its free cells: what the latent head scores
        for i, row in enumerate(rows):
            anchor = []
            for j, (col, aut, v) in enumerate(zip(schema.columns, grammar.cols, row)):
                seq = _known_tokens(col, aut, v) if known_mask[i, j] else None
                if seq is not None:
                    seq = seq + [grammar.lits[j + 1][0]]
                    fixed[i, j, :len(seq)] = g.to_local(torch.tensor(seq))
                    shown[i, j] = True
                anchor.append(v if seq is not None else _placeholder(col))
            anchors.append(anchor)
        gen = torch.Generator().manual_seed(int(check_random_state(random_state).randint(0, 2**31 - 1)))
        out_rows: list = [None] * len(rows)
        todo = list(range(len(rows)))
        bar = tqdm(total=len(rows), desc="impute", disable=not self.verbose, dynamic_ncols=True)
        for _ in range(self.max_sample_attempts):
            failed = []
            for s in range(0, len(todo), self.sample_batch_size):
                part = todo[s:s + self.sample_batch_size]
                z = self._latents_for_known(base, part, anchors, shown, int(pool), gen)
                toks = model.generate(z, self.temperature, generator=gen, fixed=fixed[part])
                for i, t in zip(part, toks):
                    try:
                        out_rows[i] = grammar.decode(t)
                        bar.update(1)
                    except InvalidValue:
                        failed.append(i)
            todo = failed
            if not todo:
                break
        bar.close()
        if todo:
            raise RuntimeError(f"{len(todo)} rows could not be completed validly after {self.max_sample_attempts} rounds")
        out = build_frame(out_rows, schema)
        out.index = df.index
        for j, c in enumerate(schema.columns):  # the user's own cells, exactly as given
            if c.name in df.columns and known_mask[:, j].any():
                with warnings.catch_warnings():  # pandas' downcasting notice; the dtype is restored below
                    warnings.simplefilter("ignore", FutureWarning)
                    merged = out[c.name].mask(known_mask[:, j], df[c.name])
                try:
                    merged = merged.astype(out[c.name].dtype)
                except (TypeError, ValueError):  # a kept value the training dtype cannot hold
                    pass
                out[c.name] = merged
        self.last_sample_stats_ = {"requested": len(rows), "known_cells": int(known_mask.sum()),
                                   "known_cells_not_shown": int((known_mask & ~shown).sum()),
                                   "filled_cells": int((~known_mask).sum())}
        return self.layout_.restore(out, known=user)

    def _latents_for_known(self, model: RowModel, part, anchors, shown, pool, gen) -> torch.Tensor:
        """One latent per row of ``part``, picked from one shared pool of ``pool`` prior draws with
        probability proportional to the latent head's likelihood of the row's shown cells (a softmax over
        the pool of the summed log-probabilities of their tokens; the head alone, no decoder). ``model`` is
        the unrestricted row model, built once per call."""
        k = len(part)
        z = self.sample_latents(pool, generator=gen)  # [P, D]
        if self.latent_head_ is None or not shown[part].any():
            return z[torch.randint(0, pool, (k,), generator=gen)]
        g, dev = model.grammar, model.device
        enc = [self._grammar.encode(anchors[i]) for i in part]
        toks, sts, valid = (x.to(dev) for x in pad_batch([e[0] for e in enc], [e[1] for e in enc], g.done))
        bi, ji = (valid & g.choice[sts]).nonzero(as_tuple=True)  # every choice of every row  [M]
        st = sts[bi, ji]
        keep = torch.as_tensor(shown[part], device=dev)[bi, g.column[st]]  # in a known cell
        prev = model.tokens_before(toks, bi, ji)[keep]  # the token before each choice, which the head reads
        cells = model.number_cells(toks, sts, bi, ji)
        cells = None if cells is None else cells[keep]  # where each sits in its number
        bi, st, tok = bi[keep], st[keep], g.to_local(toks[bi, ji][keep])
        ll = torch.zeros(k, pool, device=dev)  # log p_head(shown cells of row b | z_p)
        head = model.latent_head
        chunk = 256 if head.context is None else 32  # the hidden layer's [P, m, H] activations, m at a time
        with torch.no_grad():
            table = head(z.to(dev))  # the head's table, one row per pool latent
            for c in range(0, len(st), chunk):  # [P, m, K] at a time
                sl = slice(c, c + chunk)
                logits = head.all_logits(table, g.group[st[sl]], prev[sl], None if cells is None else cells[sl])
                logits = logits.masked_fill(~g.mask(st[sl])[None], float("-inf"))
                lp = torch.log_softmax(logits, -1).gather(2, tok[sl][None, :, None].expand(pool, -1, 1))
                ll.index_add_(0, bi[sl], lp.squeeze(2).T)
        pick = torch.multinomial(torch.softmax(ll.cpu().double(), -1), 1, generator=gen).squeeze(1)  # [k]
        return z[pick]

    def _sign_conditions(self, taken: set, rules: list) -> list:
        """Positive/Negative rules as range conditions, so the grammar writes only allowed signs (columns
        without missing values and without a condition of their own)."""
        out = []
        for c in rules:
            if not isinstance(c, Positive):
                continue
            i = self.schema_.names.index(c.column)
            col = self.schema_.columns[i]
            if i in taken or col.kind != "numeric" or col.has_missing:
                continue
            unit = 1 if col.is_int else 10.0 ** -col.decimals
            edge = (unit if c.strict else 0) * c.sign
            out += parse_conditions({c.column: (edge, None) if c.sign > 0 else (None, edge)}, self.schema_)
        return out

    def _narrowed_grammar(self, conds, rules):
        """The row grammar narrowed to the conditions, with the inequalities it can hold linked in, and the
        rules it holds. Linking can take seconds on a wide table, so the last few are kept."""
        key = (tuple(conds), tuple(c.describe() for c in rules if isinstance(c, Inequality)))
        cache = self.__dict__.setdefault("_narrowed", {})
        if key not in cache:
            grammar = restrict(self._grammar, conds, self._dec_tok) if conds else self._grammar
            if len(cache) >= 4:
                cache.pop(next(iter(cache)))
            cache[key] = link_inequalities(grammar, rules, self._dec_tok)
        grammar, held = cache[key]
        return grammar, [c for c in rules if any(c == h for h in held)]

    def _rules(self) -> list:
        """The rules sampling keeps: the ``constraints`` parameter as it is now (set_params after fit or after
        loading adds or drops rules), each one the model was fitted with in its fitted copy."""
        fitted = getattr(self, "constraints_", [])
        out = []
        for c in check_constraints(self.constraints, self.schema_.names):
            same = next((f for f in fitted if f == c), None)
            if same is None and isinstance(c, FixedCombinations):
                raise ValueError(f"{c.describe()} learns its combinations from the training rows: fit the model "
                                 "with it instead of adding it with set_params")
            out.append(c if same is None else same)
        return out

    def _rule_abiding(self, rows: list, rules) -> np.ndarray:
        """Which decoded rows (schema order) keep every constraint: bool [len(rows)]."""
        frame = build_frame(rows, self.schema_)
        ok = np.ones(len(frame), dtype=bool)
        for c in rules:
            ok &= c.holds(frame)
        return ok

    def _guided_latents(self, model: RowModel, n: int, conds, gen, hits: list, candidates: int = 8,
                        draws: int = 4) -> torch.Tensor:
        """n prior latents resampled by the conditions' likelihood: ``candidates`` x n latents from the prior,
        ``draws`` rows each written by the latent head alone (no decoder), and n latents picked without
        replacement with weight = share of their head rows that meet every condition (a small floor keeps
        each latent possible). Falls back to the prior where the model has no latent head. ``model`` is the
        unrestricted row model, built once per call."""
        if self.latent_head_ is None:
            return self.sample_latents(n, generator=gen)
        z = self.sample_latents(n * candidates, generator=gen)  # [M, D]
        rows = model.generate(z.repeat_interleave(draws, 0), 1.0, generator=gen, head_only=True)
        cols = self.schema_.columns
        hit = torch.zeros(len(rows))
        for r, t in enumerate(rows):
            try:
                row = self._grammar.decode(t)
            except InvalidValue:
                continue
            hit[r] = float(all(c.holds(row[c.column], cols[c.column]) for c in conds))
        w = hit.view(-1, draws).mean(1)  # [M]
        hits.append(float(hit.mean()))
        w = w + 1e-3 * max(float(w.max()), 1.0)
        return z[torch.multinomial(w, n, replacement=False, generator=gen)]

    # -- persistence -------------------------------------------------------------------------------------
    def save(self, path) -> None:
        """Write the fitted model to one file (safetensors + JSON, atomic). The decoder is referenced, not copied.
        Under torchrun only rank 0 writes (every process holds the same model); the others wait for it."""
        check_is_fitted(self)
        if not parallel.is_main():
            parallel.barrier()
            return
        try:
            self._write(path)
        finally:
            parallel.barrier()  # the other processes return once the file is there (or writing failed)

    def _write(self, path) -> None:
        tensors = {}
        for prefix, part in _PARTS.items():  # each trained module's weights under its own prefix
            module = getattr(self, part)
            if module is not None:
                tensors.update({f"{prefix}.{k}": v for k, v in module.state_dict().items()})
        tensors["latent_mean"] = self.latent_mean_
        for name in ("choice_counts", "choice_bias"):  # the marginal correction's target and logits
            if getattr(self, name + "_", None) is not None:
                tensors[name] = getattr(self, name + "_")
        if self.denoiser_ is None:
            tensors["latent_cov"] = self.latent_cov_
        flt = getattr(self, "privacy_filter_", None)
        if flt is not None:
            tensors.update({f"privacy_filter.{k}": v for k, v in flt.tensors().items()})
        params = self.get_params()
        rules = self._rules()
        params["constraints"] = [c.to_dict() for c in rules if c.to_dict() is not None] or None
        if any(c.to_dict() is None for c in rules):
            warnings.warn("Predicate constraints are code and are not saved with the model; after loading, pass "
                          "them again with set_params(constraints=...)", UserWarning, stacklevel=3)
        rs = self.random_state  # the user's value; a RandomState object is not JSON: the drawn seed stands in
        params["random_state"] = None if rs is None else int(rs) if isinstance(rs, numbers.Integral) else self.seed_
        params["metadata"] = parse_metadata(self.metadata, self.feature_names_in_) or None  # SDV objects: as a dict
        meta = {"tabdifflm_version": __version__, "params": params, "schema": self.schema_.to_dict(),
                "layout": self.layout_.to_dict(),
                "decoder_ref": self.decoder_ref_, "encoder_ref": self.encoder_ref_, "history": self.history_,
                "featurizer": self.featurizer_.to_dict() if self.featurizer_ is not None else None,
                "seed": self.seed_, "feature_names": [str(c) for c in self.feature_names_in_],
                "fit_seconds": self.fit_seconds_, "privacy_report": self.privacy_report_,
                "diffusion_sigma_min": self.diffusion_sigma_min_, "choice_bias_at": self.choice_bias_at_,
                "privacy_filter": None if flt is None else {"unseen_rows": flt.unseen_rows},
                "combinations": [[[v.item() if hasattr(v, "item") else v for v in t] for t in sorted(c.allowed, key=repr)]
                                 if isinstance(c, FixedCombinations) else None
                                 for c in rules if c.to_dict() is not None]}
        write_model_file(path, tensors, meta)

    @classmethod
    def load(cls, path, decoder=None, encoder=None, device=None) -> "DiffLMSynthesizer":
        """Load a model written by :meth:`save`.

        ``decoder``/``encoder`` point to where those models live now, if they moved; the decoder's weights
        must match the fingerprint stored at fit time.
        """
        tensors, meta = read_model_file(path)
        try:
            # files written before these parameters existed were fitted the paper's way
            params = {**LEGACY_PARAMS, **meta["params"]}
            params["constraints"] = [constraint_from_dict(d) for d in params.get("constraints") or []] or None
            est = cls(**params)
        except (KeyError, TypeError) as e:
            raise ModelFileError(f"{path}: model parameters unreadable: {e}") from e
        if decoder is not None:
            est.decoder = decoder
        if encoder is not None:
            est.encoder = encoder
        if device is not None:
            est.device = device
        try:  # names a bad device, or a file with impossible parameters, before any loading
            est._check_params()
        except InvalidParameterError as e:
            raise ModelFileError(f"{path}: {e}") from e
        try:
            est.decoder_dtype = meta["decoder_ref"]["dtype"]
            fingerprint_ = meta["decoder_ref"]["fingerprint"]
            schema = Schema.from_dict(meta["schema"])
            seed = int(meta["seed"])
            featurizer = RowFeaturizer.from_dict(schema, meta["featurizer"]) if meta.get("featurizer") else None
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            raise ModelFileError(f"{path}: the header is damaged ({type(e).__name__}: {e})") from e
        enc, inj, head, adapter, dec_ref, enc_ref = est._setup(schema, seed, encoder_weights=False,
                                                      n_features=featurizer.n_features if featurizer else 0)
        if dec_ref["fingerprint"] != fingerprint_:
            raise ModelFileError(f"the decoder {dec_ref['resolved']!r} has other weights than the one this model was "
                                 f"trained with ({meta['decoder_ref']['decoder']!r}); pass decoder= to point to it")
        if head is not None and head.reader is not None and "latent_head.reader.2.weight" not in tensors:
            # version 0.16's read-out: a linear map (rank latent_readout), trained by latent dropout alone
            lin = head.reader
            head.reader = LatentLogitHead.make_reader(lin[0].in_features, lin[0].out_features,
                                                      lin[-1].out_features, linear=True)
        try:
            for module, prefix in ((enc, "encoder"), (inj, "injector"), (head, "latent_head"), (adapter, "adapter")):
                if module is not None:
                    module.load_state_dict(_part(tensors, prefix))
        except RuntimeError as e:
            raise ModelFileError(f"{path}: weights do not fit the encoder, injector, latent head or adapter: {e}") from e
        dev = est._device()
        est.encoder_, est.injector_ = enc.to(dev).eval(), inj.to(dev)
        est.latent_head_ = head.to(dev) if head is not None else None
        est.decoder_adapter_ = adapter
        est.featurizer_ = featurizer
        est.latent_mean_ = tensors["latent_mean"]
        if "latent_cov" in tensors:
            est.denoiser_, est.latent_cov_ = None, tensors["latent_cov"]
        else:
            den = _part(tensors, "denoiser")
            if "net.0.weight" not in den:
                raise ModelFileError(f"{path}: neither a denoiser nor a latent covariance is stored")
            est.denoiser_ = MLPDenoiser(est.latent_mean_.shape[0], hidden=den["net.0.weight"].shape[0])
            try:
                est.denoiser_.load_state_dict(den)
            except RuntimeError as e:
                raise ModelFileError(f"{path}: the denoiser's weights do not fit: {e}") from e
            est.denoiser_.to(dev).eval()
        est.schema_ = schema
        est.decoder_ref_ = meta["decoder_ref"]
        est.encoder_ref_ = meta["encoder_ref"]
        est.history_ = meta["history"]
        est.seed_ = seed
        try:
            est.layout_ = Layout.from_dict(meta["layout"]) if "layout" in meta else Layout.identity(schema.names)
        except (KeyError, TypeError, ValueError) as e:
            raise ModelFileError(f"{path}: the column layout is damaged ({type(e).__name__}: {e})") from e
        est.n_features_in_ = len(est.layout_.all_columns)
        est.feature_names_in_ = np.asarray(est.layout_.all_columns, dtype=object)
        est.fit_seconds_ = meta.get("fit_seconds")
        est.privacy_report_ = meta.get("privacy_report")  # None in files from before version 0.7
        # files from before version 0.12 sampled down to EDM's sigma
        est.diffusion_sigma_min_ = meta.get("diffusion_sigma_min", None if est.denoiser_ is None else SIGMA_MIN)
        # files from before version 0.14 have no marginal correction
        est.choice_counts_, est.choice_bias_ = tensors.get("choice_counts"), tensors.get("choice_bias")
        est.choice_bias_at_ = meta.get("choice_bias_at")
        est.privacy_filter_ = None  # files from before version 0.18 have none
        if meta.get("privacy_filter"):
            try:
                est.privacy_filter_ = NearestRowFilter.from_tensors(schema, _part(tensors, "privacy_filter"))
            except KeyError as e:
                raise ModelFileError(f"{path}: the privacy filter is incomplete (no {e})") from e
        est.constraints_ = []
        for c, allowed in zip(est.constraints or [], meta.get("combinations") or []):
            c = copy.deepcopy(c)
            if allowed is not None:
                c.allowed = {tuple(t) for t in allowed}
            est.constraints_.append(c)
        est._sample_gen = torch.Generator().manual_seed(seed + 1)
        return est

    # -- pickling (joblib, multiprocessing) ---------------------------------------------------------------
    def __getstate__(self):
        """What :meth:`save` writes (the frozen decoder referenced, not copied) plus the parameters as given
        and the sampling stream's position: a pickled pipeline holds tens of MB, not the LLM."""
        state = {"params": self.get_params(deep=False)}
        if self.__sklearn_is_fitted__():
            with tempfile.TemporaryDirectory() as d:
                self._write(Path(d) / "model.tdl")
                state["model_file"] = (Path(d) / "model.tdl").read_bytes()
            state["sample_state"] = self._sample_gen.get_state()
            state["fitted"] = {k: v for k, v in self.__dict__.items()
                               if k in ("tokens_per_row_", "choices_per_row_", "last_sample_stats_")}
        return state

    def __setstate__(self, state):
        if "model_file" in state:
            with tempfile.TemporaryDirectory() as d:
                (Path(d) / "model.tdl").write_bytes(state["model_file"])
                loaded = type(self).load(Path(d) / "model.tdl", device=state["params"].get("device"))
            self.__dict__.update(loaded.__dict__)
            self._sample_gen.set_state(state["sample_state"])
            self.__dict__.update(state["fitted"])
            # predicates are code: not in the file, but in the pickled parameters when they pickle
            self.constraints_ += [c for c in check_constraints(state["params"].get("constraints"), self.feature_names_in_)
                                  if c.to_dict() is None]
        else:
            self.__dict__.update(state["params"])
        self.set_params(**state["params"])  # the user's own values (random_state as given, not the drawn seed)

    def __sklearn_is_fitted__(self):
        return hasattr(self, "schema_")
