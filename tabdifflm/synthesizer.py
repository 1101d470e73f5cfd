"""DiffLMSynthesizer: the scikit-learn-style estimator that ties the parts together."""
from __future__ import annotations

import math
import numbers
import time

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted
from tqdm.auto import tqdm

from . import __version__
from .decoder import DEFAULT_DECODER, fingerprint, load_decoder, resolve_dtype
from .diffusion import MLPDenoiser, sample_heun
from .encoder import DEFAULT_ENCODER, RowEncoder, load_backbone
from .grammar import InvalidValue, RowGrammar
from .injection import METHODS, Injector
from .persistence import ModelFileError, read_model_file, write_model_file
from .sampling import generate_tokens
from .schema import Schema, build_frame, check_frame, frame_rows, infer_schema
from .serialization import FORMATS, RowFormat, encoder_text
from .training import VAEData, mu_dev, train_diffusion, train_vae

MIN_ROWS = 10
_DECODERS: dict = {}  # (source, dtype, device) -> (model, tokenizer, resolved, fingerprint); frozen, so shareable


def _get_decoder(decoder, dtype, device):
    key = (str(decoder), str(dtype), str(device))
    if key not in _DECODERS:
        model, tok, src = load_decoder(decoder, dtype, device)
        _DECODERS[key] = (model, tok, src, fingerprint(model))
    return _DECODERS[key]


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
    max_beta, min_beta : float
        KL weight schedule: starts at max_beta, x0.7 when validation stalls, floor min_beta.
    max_epochs : int
        VAE epochs. max_time : float or None — seconds for the whole fit; the stages share it.
    batch_size, learning_rate, encoder_learning_rate : training of the VAE (learning_rate: head and injector).
    prior : {"diffusion", "gaussian"}
        Latent prior; "gaussian" (a full-covariance normal) is the ablation the paper's reviewers asked for.
    diffusion_steps : int
        Heun sampling steps. diffusion_train_steps : denoiser training steps.
    temperature : float
        Decoder sampling temperature (0 = greedy).
    decoder_dtype : {"auto", "float32", "bfloat16", "float16"}
    device : "auto", "cpu", "cuda", ...
    validation_size : float
        Share of the training rows held out for the beta schedule and checkpoint choice.
    sample_batch_size : int, max_sample_attempts : int
    random_state : int, RandomState or None
    verbose : bool
        Progress bars with losses.
    """

    def __init__(self, encoder=None, decoder=None, injection="soft_prompt", n_soft_tokens=8, n_prefix_tokens=8,
                 latent_dim=64, serialization="values", max_beta=0.1, min_beta=1e-3, max_epochs=10, max_time=None,
                 batch_size=16, learning_rate=3e-3, encoder_learning_rate=5e-5, prior="diffusion",
                 diffusion_steps=50, diffusion_train_steps=3000, temperature=1.0, decoder_dtype="auto",
                 device="auto", validation_size=0.1, eval_every=25, sample_batch_size=256, max_sample_attempts=10,
                 random_state=None, verbose=True):
        self.encoder = encoder
        self.decoder = decoder
        self.injection = injection
        self.n_soft_tokens = n_soft_tokens
        self.n_prefix_tokens = n_prefix_tokens
        self.latent_dim = latent_dim
        self.serialization = serialization
        self.max_beta = max_beta
        self.min_beta = min_beta
        self.max_epochs = max_epochs
        self.max_time = max_time
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.encoder_learning_rate = encoder_learning_rate
        self.prior = prior
        self.diffusion_steps = diffusion_steps
        self.diffusion_train_steps = diffusion_train_steps
        self.temperature = temperature
        self.decoder_dtype = decoder_dtype
        self.device = device
        self.validation_size = validation_size
        self.eval_every = eval_every
        self.sample_batch_size = sample_batch_size
        self.max_sample_attempts = max_sample_attempts
        self.random_state = random_state
        self.verbose = verbose

    # -- helpers -----------------------------------------------------------------------------------------
    def _check_params(self):
        if self.injection not in METHODS:
            raise ValueError(f"injection={self.injection!r}; choose one of {METHODS}")
        if self.serialization not in FORMATS:
            raise ValueError(f"serialization={self.serialization!r}; choose one of {FORMATS}")
        if self.prior not in ("diffusion", "gaussian"):
            raise ValueError(f"prior={self.prior!r}; choose 'diffusion' or 'gaussian'")
        for name in ("n_soft_tokens", "n_prefix_tokens", "latent_dim", "batch_size", "diffusion_steps",
                     "sample_batch_size", "max_sample_attempts", "eval_every"):
            v = getattr(self, name)
            if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.injection == "soft_prompt" and self.n_prefix_tokens + self.n_soft_tokens < 1:
            raise ValueError("soft_prompt needs at least one token")
        if not (0 < self.min_beta <= self.max_beta):
            raise ValueError(f"need 0 < min_beta <= max_beta, got {self.min_beta}, {self.max_beta}")
        if self.max_time is not None and not self.max_time > 0:
            raise ValueError(f"max_time must be positive seconds or None, got {self.max_time!r}")
        if not isinstance(self.max_epochs, numbers.Integral) or self.max_epochs < 0:
            raise ValueError(f"max_epochs must be a non-negative integer, got {self.max_epochs!r}")
        if not 0 < self.validation_size < 0.5:
            raise ValueError(f"validation_size must be in (0, 0.5), got {self.validation_size!r}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature!r}")

    def _device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def _setup(self, schema: Schema, seed: int, encoder_weights: bool):
        """Build decoder, grammar, encoder and injector (random init, or architecture only)."""
        device = self._device()
        dtype = resolve_dtype(self.decoder_dtype, device)
        self._decoder, self._dec_tok, dec_src, dec_fp = _get_decoder(self.decoder, dtype, device)
        self._grammar = RowGrammar(RowFormat(self.serialization, schema), self._dec_tok)
        backbone, self._enc_tok, enc_src = load_backbone(self.encoder, weights=encoder_weights)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            encoder = RowEncoder(backbone, self.latent_dim).to(device)
        injector = Injector(self.injection, self.latent_dim, self._decoder, self.n_soft_tokens,
                            self.n_prefix_tokens, seed=seed).to(device)
        ref = {"decoder": self.decoder if self.decoder is not None else DEFAULT_DECODER, "resolved": dec_src,
               "fingerprint": dec_fp, "dtype": str(dtype).replace("torch.", "")}
        return encoder, injector, ref, {"encoder": self.encoder or DEFAULT_ENCODER, "resolved": enc_src}

    # -- fit ---------------------------------------------------------------------------------------------
    def fit(self, X, y=None):
        """Learn the table X (DataFrame; ``y`` is ignored). Returns self."""
        self._check_params()
        t_start = time.monotonic()
        df = check_frame(X)
        n = len(df)
        if n < MIN_ROWS:
            raise ValueError(f"need at least {MIN_ROWS} rows (training plus a validation slice), got {n}")
        schema = infer_schema(df)
        seed = int(check_random_state(self.random_state).randint(0, 2**31 - 1))
        # Dropout and default inits draw from torch's global RNG: seed it, without disturbing the caller's.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self._fit(df, schema, seed, t_start)

    def _fit(self, df, schema, seed, t_start):
        n = len(df)
        gen = torch.Generator().manual_seed(seed)
        encoder, injector, dec_ref, enc_ref = self._setup(schema, seed, encoder_weights=True)
        grammar = self._grammar
        rows = frame_rows(df, schema)
        enc_texts = [encoder_text(schema, r) for r in rows]
        toks, states = zip(*(grammar.encode(r) for r in rows))
        data = VAEData(self._enc_tok, enc_texts, list(toks), list(states), grammar.done)

        n_val = int(min(max(2, round(self.validation_size * n)), 256))
        perm = torch.randperm(n, generator=gen)
        val_idx, train_idx = perm[:n_val], perm[n_val:]
        budget = math.inf if self.max_time is None else float(self.max_time)
        vae_deadline = t_start + 0.85 * budget
        history = {"vae": [], "diffusion": []}
        history["vae"] = train_vae(
            encoder, injector, self._decoder, grammar, data, train_idx, val_idx, max_epochs=self.max_epochs,
            deadline=vae_deadline, batch_size=self.batch_size, learning_rate=self.learning_rate,
            encoder_learning_rate=self.encoder_learning_rate, max_beta=self.max_beta, min_beta=self.min_beta,
            eval_every=self.eval_every, generator=gen, verbose=self.verbose)

        mu = self._encode_means(encoder, data)
        self.latent_mean_ = mu.mean(0)
        zn = (mu - self.latent_mean_) / 2  # TabSyn/DiffLM normalisation
        if self.prior == "diffusion":
            self.denoiser_, history["diffusion"] = train_diffusion(
                zn, steps=self.diffusion_train_steps, deadline=t_start + 0.98 * budget, generator=gen,
                verbose=self.verbose)
        else:
            self.denoiser_ = None
            self.latent_cov_ = torch.cov(zn.T) + 1e-6 * torch.eye(zn.shape[1])
        self.encoder_ = encoder
        self.injector_ = injector
        self.schema_ = schema
        self.decoder_ref_ = dec_ref
        self.encoder_ref_ = enc_ref
        self.history_ = history
        self.seed_ = seed
        self.n_features_in_ = df.shape[1]
        self.feature_names_in_ = np.asarray(df.columns, dtype=object)
        self.fit_seconds_ = time.monotonic() - t_start
        self._sample_gen = torch.Generator().manual_seed(seed + 1)
        return self

    @torch.no_grad()
    def _encode_means(self, encoder, data: VAEData, batch: int = 64) -> torch.Tensor:
        dev = mu_dev(encoder)
        out = []
        for s in range(0, len(data), batch):
            ids, am, *_ = data.batch(range(s, min(s + batch, len(data))))
            out.append(encoder(ids.to(dev), am.to(dev))[0].float().cpu())
        return torch.cat(out)

    # -- sample ------------------------------------------------------------------------------------------
    def sample_latents(self, n: int, generator=None) -> torch.Tensor:
        """Draw n latents from the fitted prior. Returns [n, latent_dim] (VAE latent scale)."""
        check_is_fitted(self)
        if self.denoiser_ is not None:
            zn = sample_heun(self.denoiser_, n, self.latent_mean_.shape[0], steps=self.diffusion_steps,
                             generator=generator)
        else:
            L = torch.linalg.cholesky(self.latent_cov_)
            zn = torch.randn(n, L.shape[0], generator=generator) @ L.T
        return zn * 2 + self.latent_mean_

    def sample(self, n_samples, random_state=None) -> pd.DataFrame:
        """Generate exactly ``n_samples`` valid rows with the training columns, order and dtypes.

        Rows whose text breaks the schema (a date that does not exist, a number outside the training range)
        are generated again, at most ``max_sample_attempts`` rounds. ``random_state`` overrides the
        estimator's sampling stream for this call.
        """
        check_is_fitted(self)
        if not isinstance(n_samples, numbers.Integral) or isinstance(n_samples, bool):
            raise TypeError(f"n_samples must be an integer, got {type(n_samples).__name__}")
        if n_samples < 1:
            raise ValueError(f"n_samples must be at least 1, got {n_samples}")
        n = int(n_samples)
        gen = self._sample_gen if random_state is None else torch.Generator().manual_seed(
            int(check_random_state(random_state).randint(0, 2**31 - 1)))
        dev = mu_dev(self.encoder_)
        got, generated, errors = [], 0, {}
        first_round_valid = None
        bar = tqdm(total=n, desc="sample", disable=not self.verbose, dynamic_ncols=True)
        for attempt in range(self.max_sample_attempts):
            need = n - len(got)
            m = need if attempt == 0 else min(max(need * 2, 8), need + 4 * self.sample_batch_size)
            z = self.sample_latents(m, generator=gen).to(dev)
            round_valid = 0
            for s in range(0, m, self.sample_batch_size):
                toks = generate_tokens(self._decoder, self.injector_, self._grammar, z[s:s + self.sample_batch_size],
                                       temperature=self.temperature, generator=gen)
                for t in toks:
                    generated += 1
                    try:
                        row = self._grammar.decode(t)
                    except InvalidValue as e:
                        key = str(e).split(":")[0]
                        errors[key] = errors.get(key, 0) + 1
                        continue
                    round_valid += 1
                    if len(got) < n:
                        got.append(row)
                        bar.update(1)
            if attempt == 0:
                first_round_valid = round_valid / m
            if len(got) >= n:
                break
        bar.close()
        self.last_sample_stats_ = {"requested": n, "generated": generated, "valid": len(got),
                                   "first_try_valid_share": first_round_valid, "invalid_by_reason": errors}
        if len(got) < n:
            raise RuntimeError(f"only {len(got)} of {n} rows were valid after {self.max_sample_attempts} rounds "
                               f"({generated} generated); invalid values by column: {errors}")
        return build_frame(got, self.schema_)

    # -- persistence -------------------------------------------------------------------------------------
    def save(self, path) -> None:
        """Write the fitted model to one file (safetensors + JSON, atomic). The decoder is referenced, not copied."""
        check_is_fitted(self)
        tensors = {f"encoder.{k}": v for k, v in self.encoder_.state_dict().items()}
        tensors.update({f"injector.{k}": v for k, v in self.injector_.state_dict().items()})
        tensors["latent_mean"] = self.latent_mean_
        if self.denoiser_ is not None:
            tensors.update({f"denoiser.{k}": v for k, v in self.denoiser_.state_dict().items()})
        else:
            tensors["latent_cov"] = self.latent_cov_
        params = self.get_params()
        params["random_state"] = self.seed_  # a RandomState object is not JSON; the drawn seed reproduces it
        meta = {"tabdifflm_version": __version__, "params": params, "schema": self.schema_.to_dict(),
                "decoder_ref": self.decoder_ref_, "encoder_ref": self.encoder_ref_, "history": self.history_,
                "seed": self.seed_, "feature_names": [str(c) for c in self.feature_names_in_],
                "fit_seconds": self.fit_seconds_}
        write_model_file(path, tensors, meta)

    @classmethod
    def load(cls, path, decoder=None, encoder=None, device=None) -> "DiffLMSynthesizer":
        """Load a model written by :meth:`save`.

        ``decoder``/``encoder`` point to where those models live now, if they moved; the decoder's weights
        must match the fingerprint stored at fit time.
        """
        tensors, meta = read_model_file(path)
        try:
            params = meta["params"]
            est = cls(**params)
        except (KeyError, TypeError) as e:
            raise ModelFileError(f"{path}: model parameters unreadable: {e}") from e
        if decoder is not None:
            est.decoder = decoder
        if encoder is not None:
            est.encoder = encoder
        if device is not None:
            est.device = device
        est.decoder_dtype = meta["decoder_ref"]["dtype"]
        schema = Schema.from_dict(meta["schema"])
        seed = int(meta["seed"])
        enc, inj, dec_ref, enc_ref = est._setup(schema, seed, encoder_weights=False)
        if dec_ref["fingerprint"] != meta["decoder_ref"]["fingerprint"]:
            raise ModelFileError(f"the decoder {dec_ref['resolved']!r} has other weights than the one this model was "
                                 f"trained with ({meta['decoder_ref']['decoder']!r}); pass decoder= to point to it")
        try:
            enc.load_state_dict({k[8:]: v for k, v in tensors.items() if k.startswith("encoder.")})
            inj.load_state_dict({k[9:]: v for k, v in tensors.items() if k.startswith("injector.")})
        except RuntimeError as e:
            raise ModelFileError(f"{path}: weights do not fit the encoder/injector: {e}") from e
        dev = est._device()
        est.encoder_, est.injector_ = enc.to(dev).eval(), inj.to(dev)
        est.latent_mean_ = tensors["latent_mean"]
        if "latent_cov" in tensors:
            est.denoiser_, est.latent_cov_ = None, tensors["latent_cov"]
        else:
            den = {k[9:]: v for k, v in tensors.items() if k.startswith("denoiser.")}
            hidden = den["net.0.weight"].shape[0]
            est.denoiser_ = MLPDenoiser(est.latent_mean_.shape[0], hidden=hidden)
            est.denoiser_.load_state_dict(den)
            est.denoiser_.eval()
        est.schema_ = schema
        est.decoder_ref_ = meta["decoder_ref"]
        est.encoder_ref_ = meta["encoder_ref"]
        est.history_ = meta["history"]
        est.seed_ = seed
        est.n_features_in_ = len(schema)
        est.feature_names_in_ = np.asarray(schema.names, dtype=object)
        est.fit_seconds_ = meta.get("fit_seconds")
        est._sample_gen = torch.Generator().manual_seed(seed + 1)
        return est

    def __sklearn_is_fitted__(self):
        return hasattr(self, "schema_")
