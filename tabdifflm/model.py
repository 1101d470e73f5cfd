"""DiffLM's model: ``RowModel`` is the decoding side (latent -> injector -> frozen LLM -> masked logits of each
choice), ``RowVAE`` the whole VAE (text encoder + ``RowModel``) that computes its own training loss.

Training (teacher-forced NLL of every grammar choice) and sampling (``generate``) both go through
:meth:`RowModel.logits`, so the model samples exactly the distribution it was trained on. Logits are
computed for the grammar's sub-vocabulary only (``head.weight[vocab]``: a few hundred of the decoder's
~49k tokens), masked by the compiled grammar's tables, and optionally shifted by the latent logit head
(a direct path from the latent to every (column, position) choice, with its number head for the digits of
number columns; see docs/design.md).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .decoder import run_base
from .grammar import CompiledGrammar, RowGrammar
from .numbers import Cells, NumberHead


class LatentLogitHead(nn.Module):
    """Latent z [B, D] -> additive logits for each (column, position) group over the sub-vocabulary.

    A linear map, plus (``hidden > 0``) a one-hidden-layer SiLU network beside it: the digits after a
    number's first are not monotone in its value, which a linear map of the latent cannot express.
    With ``context=True`` the hidden layer also reads the token just written (an embedding added to its
    input), so the digit after a ``0`` can differ from the digit after a ``1`` of the same number (99 vs
    100): per-position logits that ignore the digits before them mix the two. The output layers (and the
    context embedding) start at zero, so a fresh model writes exactly what the frozen decoder would;
    training moves each group's logits by a function of the latent (a product of experts with the LLM).

    ``forward`` returns the latent's part once per row as one tensor, "the table": every group's logits
    [B, G * K], or with context the linear logits and the hidden layer's input [B, G * K + H] (the rest
    depends on the token before); :meth:`choice_logits` turns it into the logits of single choices.
    With ``numbers`` (a :class:`~tabdifflm.numbers.NumberHead`, reading the hidden layer) the table ends
    with each number column's mixture parameters, and the digit logits they imply are added to the choices
    inside numbers.

    With ``read_width > 0`` the head also holds a read-out of the frozen decoder's hidden state (``read_dim``
    wide): a network with one hidden layer ``read_width`` wide from it to logits (:meth:`read`, zero at the
    start). The latent's logits depend
    on the latent alone, so without it every column is drawn independently of the columns already written
    given the latent, and all of a row's coherence (a wife is female, education 10th is education-num 6)
    must be carried by the latent; a sampler stopped early returns a blend of nearby latents and breaks it.
    The decoder's hidden state has read the row so far, so the read-out can carry what the columns written
    say about the next one.
    """

    def __init__(self, latent_dim: int, n_groups: int, n_tokens: int, hidden: int = 0, context: bool = False,
                 numbers: NumberHead | None = None, read_dim: int = 0, read_width: int = 0):
        super().__init__()
        self.numbers = numbers  # reads the hidden layer (or the latent); its parameters end the table
        self.reader = None
        if read_width:
            self.reader = self.make_reader(read_dim, read_width, n_tokens)
        self.weight = nn.Parameter(torch.zeros(n_groups * n_tokens, latent_dim))
        self.bias = nn.Parameter(torch.zeros(n_groups * n_tokens))
        self.shape = (n_groups, n_tokens)
        self.hidden = None
        self.context = None
        if hidden:
            self.hidden = nn.Linear(latent_dim, hidden)  # default init: the features must differ from the start
            self.out = nn.Linear(hidden, n_groups * n_tokens, bias=False)
            nn.init.zeros_(self.out.weight)
            if context:  # row n_tokens: no token before (the row's first choice)
                self.context = nn.Embedding(n_tokens + 1, hidden)
                nn.init.zeros_(self.context.weight)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, D] -> the table: [B, G * K], or [B, G * K + H] with context, then the number head's
        parameters [B, NP] where it has one."""
        z = z.float()
        logits = F.linear(z, self.weight, self.bias)  # [B, G * K]
        parts = [logits]
        if self.hidden is not None:
            pre = self.hidden(z)  # [B, H]
            if self.context is None:
                parts[0] = logits + self.out(F.silu(pre))
            else:
                parts.append(pre)
        if self.numbers is not None:
            parts.append(self.numbers(z if self.hidden is None else F.silu(pre)))
        return parts[0] if len(parts) == 1 else torch.cat(parts, 1)

    @staticmethod
    def make_reader(read_dim: int, width: int, n_tokens: int, linear: bool = False) -> nn.Module:
        """A fresh read-out [N, read_dim] -> [N, n_tokens] that adds nothing: one SiLU hidden layer ``width``
        wide, or (``linear``, as version 0.16 built it) a rank-``width`` linear map."""
        if linear:
            reader = nn.Sequential(nn.Linear(read_dim, width, bias=False), nn.Linear(width, n_tokens))
        else:
            reader = nn.Sequential(nn.Linear(read_dim, width), nn.SiLU(), nn.Linear(width, n_tokens))
        nn.init.zeros_(reader[-1].weight)
        nn.init.zeros_(reader[-1].bias)
        return reader

    def read(self, h: torch.Tensor) -> torch.Tensor:
        """Decoder hidden states h [N, H] -> the read-out's logits [N, K] (needs ``read_width > 0``)."""
        return self.reader(h.float())

    def _hidden_part(self, table: torch.Tensor) -> torch.Tensor:
        """The context head's hidden-layer input [B, H] in the table."""
        G, K = self.shape
        return table[:, G * K:G * K + self.hidden.out_features]

    def choice_logits(self, table: torch.Tensor, rows: torch.Tensor, groups: torch.Tensor,
                      prev: torch.Tensor | None = None, cells: Cells | None = None) -> torch.Tensor:
        """Logits [N, K] of N choices: the table's row rows [N], group groups [N], prev [N] the
        sub-vocabulary id of the token written before each choice (``n_tokens`` for none; needed with
        context, ignored without) and cells [N] where each sits in its number (needed with a number head)."""
        G, K = self.shape
        out = table[:, :G * K].view(-1, G, K)[rows, groups]  # [N, K]
        if self.context is not None:
            h = self._hidden_part(table)[rows] + self.context(prev)  # [N, H]
            w = self.out.weight.view(G, K, -1)[groups]  # [N, K, H]
            out = out + torch.einsum("nkh,nh->nk", w, F.silu(h))
        if self.numbers is not None:
            out = out + self.numbers.logits(table[rows, -self.numbers.n_params:], cells)
        return out

    def all_logits(self, table: torch.Tensor, groups: torch.Tensor, prev: torch.Tensor,
                   cells: Cells | None = None) -> torch.Tensor:
        """Logits [P, M, K] of M choices (groups [M], tokens before them prev [M], where they sit in their
        numbers cells [M]) under each of the P rows of the table: the head's likelihood of fixed cells
        under many latents."""
        G, K = self.shape
        out = table[:, :G * K].view(-1, G, K)[:, groups]  # [P, M, K]
        if self.context is not None:
            h = self._hidden_part(table)[:, None] + self.context(prev)[None]  # [P, M, H]
            w = self.out.weight.view(G, K, -1)[groups]  # [M, K, H]
            out = out + torch.einsum("mkh,pmh->pmk", w, F.silu(h))
        if self.numbers is not None:
            P, M = out.shape[:2]
            params = table[:, -self.numbers.n_params:]  # [P, NP]
            flat = Cells(*(t.repeat(P) for t in cells))  # [P * M]: every choice under every latent
            out = out + self.numbers.logits(params.repeat_interleave(M, 0), flat).view(P, M, K)
        return out


class RowModel(nn.Module):
    """p(row | z): the injector and latent head (trained) around the frozen decoder and the row grammar
    (its automaton ``automaton`` for whole rows, its compiled tables ``grammar`` for the inner loops).

    The decoder is held, not registered: its weights never change and are saved by id and fingerprint,
    so ``state_dict()`` holds the trained parts only. With LoRA, ``adapter`` is the
    :class:`~tabdifflm.decoder.DecoderAdapter` whose copy of the decoder this is: its adapter matrices are
    registered here (trained and saved), the base weights still are not.
    """

    def __init__(self, decoder, injector: nn.Module, grammar: RowGrammar, latent_head: nn.Module | None = None,
                 adapter: nn.Module | None = None):
        super().__init__()
        self.injector = injector
        self.latent_head = latent_head
        self.adapter = adapter
        object.__setattr__(self, "decoder", decoder)
        dev = next(decoder.parameters()).device
        self.automaton = grammar  # reads and writes whole rows (encode/decode); the reference of the tables
        self.grammar: CompiledGrammar = grammar.tables.to(dev)
        head = decoder.get_output_embeddings()
        # the frozen output head cut to the sub-vocabulary once: [K, H] (and [K])
        self.head_weight = head.weight.detach()[self.grammar.vocab]
        self.head_bias = None if head.bias is None else head.bias.detach()[self.grammar.vocab]
        self.softcap = getattr(decoder.config, "final_logit_softcapping", None)

    @property
    def device(self) -> torch.device:
        return self.head_weight.device

    # -- logits ------------------------------------------------------------------------------------------
    def logits(self, h: torch.Tensor, states: torch.Tensor, table: torch.Tensor | None = None,
               rows: torch.Tensor | None = None, prev: torch.Tensor | None = None,
               cells: Cells | None = None, keep: torch.Tensor | None = None, read: bool = True) -> torch.Tensor:
        """Masked logits of choices over the sub-vocabulary.

        h [N, H]: decoder hidden states (after the final norm) that predict the next token; states [N]: the
        grammar state of each; table: the latent head's output for the batch (or None), and rows
        [N] the batch row of each choice (default: row n is choice n). Returns float32 [N, K], -inf where
        the state forbids the token. prev [N]: the sub-vocabulary id of the token written before each
        choice (``K`` for none), and cells [N] where each sits in its number (:meth:`number_cells`), which
        the latent head reads (:meth:`LatentLogitHead.choice_logits`). keep [B] (training's latent dropout):
        1 where a batch row's latent logits count, 0 where the row is written without them. ``read=False``
        leaves out the latent head's read-out of h (what the read-out's own training adds to).
        """
        logits = F.linear(h, self.head_weight, self.head_bias).float()
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        if table is not None:
            rows = torch.arange(len(h), device=h.device) if rows is None else rows
            groups = self.grammar.group[states].clamp(min=0)
            head = self.latent_head.choice_logits(table, rows, groups, prev, cells)
            logits = logits + (head if keep is None else head * keep.to(head)[rows, None])
        if read and self.latent_head is not None and self.latent_head.reader is not None:
            logits = logits + self.latent_head.read(h)
        return self._masked(logits, states)

    def _masked(self, logits, states):
        """Logits [N, K] -> -inf where the state [N] forbids the token."""
        return logits.masked_fill(~self.grammar.mask(states), float("-inf"))

    def _choices(self, states, valid):
        """Positions (row [M], position [M]) of the real choices in a padded batch, and their states [M]."""
        bi, ji = (valid & self.grammar.choice[states]).nonzero(as_tuple=True)
        return bi, ji, states[bi, ji]

    def tokens_before(self, toks, bi, ji):
        """Sub-vocabulary id [M] of the token before each choice (row bi [M], position ji [M] of the decoder
        tokens toks [B, L]); K at a row's start. What the latent head reads with context."""
        before = self.grammar.to_local(toks[bi, (ji - 1).clamp(min=0)])
        return torch.where(ji > 0, before, self.grammar.K)

    @property
    def numbers(self) -> NumberHead | None:
        """The latent head's number head, if it has one."""
        return None if self.latent_head is None else self.latent_head.numbers

    def number_cells(self, toks, states, bi, ji) -> Cells | None:
        """Where each choice (row bi [M], position ji [M] of the decoder tokens toks and grammar states
        states [B, L]) sits in its number; None without a number head."""
        if self.numbers is None:
            return None
        local = self.grammar.to_local(toks).clamp(max=self.grammar.K - 1)  # padding: any token, never read
        return self.numbers.cells(self.grammar.column[states], local)[bi, ji]

    def _target_nll(self, logits, toks):
        """Masked logits [M, K] and the decoder tokens written [M] -> NLL of each [M]."""
        return choice_nll(logits, self.grammar.to_local(toks))

    # -- training ----------------------------------------------------------------------------------------
    def forward(self, z: torch.Tensor, toks: torch.Tensor, states: torch.Tensor, valid: torch.Tensor,
                keep: torch.Tensor | None = None):
        """Teacher-forced NLL of every real choice of each row given its latent.

        z [B, D]; toks/states/valid [B, L] (decoder tokens, grammar state before each, padding mask). Only
        positions with more than one allowed token count, and the softmax runs over the tokens the grammar
        allows (the distribution the sampler draws from). keep [B] or None: latent dropout (:meth:`logits`).
        Returns (nll [M] in nats, row [M], column [M]) for the M choices of the batch.
        """
        return self.nll_given({**self.latent_inputs(z), "keep": keep}, toks, states, valid)

    def latent_inputs(self, z: torch.Tensor) -> dict:
        """What the latent z [B, D] feeds the frozen decoder and the logits: ``prefix`` [B, P, H], ``offset``
        [B, 1, H] (embedding injection), ``kv`` [B, layers * 2 * heads * head_dim] (kv_memory) and ``table``
        [B, G, K] (the latent head); None where the model has no such input."""
        inj = self.injector
        return {"prefix": inj.prefix_embeds(z), "offset": inj.token_offset(z),
                "kv": inj.proj(z) if inj.method == "kv_memory" else None,
                "table": None if self.latent_head is None else self.latent_head(z)}

    def nll_given(self, parts: dict, toks, states, valid):
        """:meth:`forward` from the latent's inputs (:meth:`latent_inputs`) instead of the latent."""
        _, logits, target, bi, cols = self.choice_view(parts, toks, states, valid)
        return choice_nll(logits, target), bi, cols

    def choice_view(self, parts: dict, toks, states, valid, read: bool = True):
        """Every real choice of a teacher-forced batch as the sampler meets it.

        parts: :meth:`latent_inputs` of the batch's latents (with ``keep`` for latent dropout); toks/states/
        valid [B, L] as in :meth:`forward`. Returns the decoder's hidden state before each choice h [M, H], the
        masked logits [M, K] (``read=False``: without the latent head's read-out of h), the token written
        [M] (sub-vocabulary id), and the batch row [M] and column [M] of each choice.
        """
        dev = self.device
        toks, states, valid = toks.to(dev), states.to(dev), valid.to(dev)
        inj = self.injector
        emb = self.decoder.get_input_embeddings()
        x = emb(toks[:, :-1]).float()  # [B, L-1, H]
        if parts["offset"] is not None:
            x = x + parts["offset"]
        x = torch.cat([parts["prefix"], x], 1).to(self.decoder.dtype)  # [B, P+L-1, H]
        memory = None if parts["kv"] is None else inj.memory_from(parts["kv"], self.decoder.dtype)
        h, _ = run_base(self.decoder.base_model, x, memory)
        h = h[:, inj.n_prefix - 1:]  # the hidden state that predicts token j sits at P - 1 + j
        bi, ji, st = self._choices(states, valid)
        h = h[bi, ji]  # [M, H]
        logits = self.logits(h, st, parts["table"], bi, self.tokens_before(toks, bi, ji),
                             self.number_cells(toks, states, bi, ji), parts.get("keep"), read)
        return h, logits, self.grammar.to_local(toks[bi, ji]), bi, self.grammar.column[st]

    def head_nll(self, z, toks, states, valid):
        """NLL of every choice under the latent logit head alone (no decoder pass): the auxiliary loss that
        makes the latent carry every column. Same arguments and returns as :meth:`forward`."""
        return self.head_nll_given(self.latent_head(z), toks, states, valid)

    def head_nll_given(self, table, toks, states, valid):
        """:meth:`head_nll` from the latent head's output table (:meth:`LatentLogitHead.forward`)."""
        dev = self.device
        toks, states, valid = toks.to(dev), states.to(dev), valid.to(dev)
        bi, ji, st = self._choices(states, valid)
        logits = self.latent_head.choice_logits(table, bi, self.grammar.group[st], self.tokens_before(toks, bi, ji),
                                                self.number_cells(toks, states, bi, ji))
        logits = self._masked(logits, st)
        return self._target_nll(logits, toks[bi, ji]), bi, self.grammar.column[st]

    # -- sampling ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def _static_cache(self, memory, length: int):
        """A KV cache allocated once for the whole row (``length`` positions), holding the latent's memory
        slot if there is one; a growing cache copies itself at every token. None where this transformers
        has no StaticCache of this form (the growing cache is used then)."""
        try:
            from transformers import StaticCache

            cache = StaticCache(config=self.decoder.config, max_cache_len=length)
        except (ImportError, TypeError):
            return memory
        if memory is not None:
            for i, layer in enumerate(memory.layers):
                cache.update(layer.keys, layer.values, i)
        return cache

    @torch.no_grad()  # sampling keeps no autograd graph: with one, every token's activations stay alive
    def generate(self, z: torch.Tensor, temperature: float = 1.0, generator: torch.Generator | None = None,
                 static_cache: bool = False, head_only: bool = False, fixed: torch.Tensor | None = None,
                 choice_bias: torch.Tensor | None = None, choice_stats: torch.Tensor | None = None):
        """Write one row per latent. z [B, D] -> list of B decoder-token lists (each a complete row).

        All rows advance in lockstep, one decoder call per token with the KV cache; grammar states step by
        table lookup on the model's device, and the host is asked once a token whether every row is done.
        Forced tokens (literal text) are written without sampling; a finished row is fed padding. The
        grammar bounds every row's length, so this ends after at most ``grammar.max_tokens`` steps.
        ``generator`` (on any device) makes the draws reproducible; temperature 0 is greedy.
        ``static_cache=True`` allocates the KV cache once for the whole row instead of growing it at every
        token, about 10 % slower on the CPU. ``head_only=True`` writes rows from the latent logit head alone
        (no decoder call: thousands of rows a second), a cheap model of p(row | z) for steering latents.
        ``fixed`` [B, C, W] (sub-vocabulary ids, -1 = free) prescribes known values: where row b's entry for
        column c is set, the value's tokens and the separator after it are written instead of sampled, so
        the columns after it are written knowing it (imputation). Each must be a path the grammar allows.
        ``choice_bias`` [G, K] (needs the latent head) is added to every row's logits of each (column,
        position) group's choices (:mod:`tabdifflm.marginals`); ``choice_stats`` [G, K] (on the CPU), if
        given, gets each choice's probabilities (at ``temperature``) added to its group's row, in place.
        """
        g, dec, inj = self.grammar, self.decoder, self.injector
        dev, dtype = self.device, dec.dtype
        z = z.to(dev)
        B = z.shape[0]
        if head_only and self.latent_head is None:
            raise ValueError("head_only generation needs the latent logit head (latent_head=True)")
        table = None if self.latent_head is None else self.latent_head(z)  # the head's table, once per row
        if choice_bias is not None:
            if table is None:
                raise ValueError("choice_bias needs the latent logit head (latent_head=True)")
            table = table + F.pad(choice_bias.reshape(1, -1).to(table), (0, table.shape[1] - choice_bias.numel()))
        if not head_only:
            emb = dec.get_input_embeddings()
            prefix = inj.prefix_embeds(z).to(dtype)
            cache = inj.memory(z, dtype)
            if static_cache:
                cache = self._static_cache(cache, prefix.shape[1] + g.max_tokens + 1)
            h, cache = run_base(dec.base_model, prefix, cache, True)
            h = h[:, -1]  # [B, H]
            offset = inj.token_offset(z)
        rows = torch.arange(B, device=dev)
        state = torch.full((B,), g.start, dtype=torch.long, device=dev)
        out = torch.full((B, g.max_tokens), g.pad, dtype=torch.long, device=dev)  # sub-vocabulary ids
        length = torch.zeros(B, dtype=torch.long, device=dev)
        prev = torch.full((B,), g.K, dtype=torch.long, device=dev)  # the token just written, for the latent head
        numbers = self.numbers
        cells = None if numbers is None else numbers.start(B, dev)  # where each row is in its number
        if temperature > 0:  # every uniform drawn at once, on the generator's device, moved over once
            u = torch.rand(g.max_tokens, B, 1, generator=generator,
                           device=generator.device if generator is not None else dev).to(dev)
        if fixed is not None:
            fixed = fixed.to(dev)
            col_prev = torch.full((B,), -1, dtype=torch.long, device=dev)
            pos = torch.zeros(B, dtype=torch.long, device=dev)
        for t in range(g.max_tokens):
            live = state != g.done
            st = torch.where(live, state, g.start)
            if numbers is not None:
                cells = numbers.enter(cells, g.column[st])
            if head_only:  # the latent head's logits alone (literal text is forced either way)
                groups = g.group[st].clamp(min=0)
                logits = self._masked(self.latent_head.choice_logits(table, rows, groups, prev, cells), st)
            else:
                logits = self.logits(h, st, table, prev=prev, cells=cells)  # [B, K]
            if temperature <= 0:
                pick = logits.argmax(-1)
                probs = F.one_hot(pick, g.K).float() if choice_stats is not None else None
            else:  # inverse CDF: the first token whose cumulative probability reaches u
                probs = torch.softmax(logits / temperature, -1)  # [B, K]
                cdf = probs.cumsum(-1)
                pick = (cdf < (1 - u[t]) * cdf[:, -1:]).sum(-1)  # 1 - u is in (0, 1]: never a masked token
            if choice_stats is not None:  # expected choices: the frequencies of the picks, with less noise
                at = live & g.choice[st] & (g.group[st] >= 0)
                choice_stats.index_add_(0, g.group[st][at].cpu(), probs[at].float().cpu())
            forced = g.forced[state]
            tok = torch.where(forced >= 0, forced, pick)
            if fixed is not None:  # known values: their tokens, counted from the value's first
                col = g.column[st]  # [B], -1 in literal text
                pos = torch.where(col == col_prev, pos + 1, 0)
                col_prev = col
                want = fixed[rows, col.clamp(min=0), pos.clamp(max=fixed.shape[2] - 1)]
                tok = torch.where((col >= 0) & (want >= 0), want, tok)
            tok = torch.where(live, tok, g.pad)
            out[:, t] = tok
            prev = tok
            if numbers is not None:
                cells = numbers.advance(cells, tok)
            length += live
            state = g.step(state, tok)
            if not bool((state != g.done).any()):  # the one host sync per token
                break
            if not head_only:
                x = emb(g.vocab[tok])[:, None].float()  # [B, 1, H]
                if offset is not None:
                    x = x + offset
                h, cache = run_base(dec.base_model, x.to(dtype), cache, True)
                h = h[:, -1]
        toks = g.vocab[out].tolist()
        return [row[:n] for row, n in zip(toks, length.tolist())]


def choice_nll(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Masked logits [M, K] and the sub-vocabulary id written at each choice [M] -> NLL of each [M] (nats)."""
    return torch.logsumexp(logits, -1) - logits.gather(1, target[:, None]).squeeze(1)


def cell_means(nll, rows, cols, n_rows: int, n_cols: int):
    """Each (row, column) cell's mean token NLL [B, C] and whether the cell has any choice [B, C]."""
    cell = rows * n_cols + cols
    tot = torch.zeros(n_rows * n_cols, device=nll.device).index_add(0, cell, nll)
    cnt = torch.zeros(n_rows * n_cols, device=nll.device).index_add(0, cell, torch.ones_like(nll))
    return (tot / cnt.clamp(min=1)).view(n_rows, n_cols), (cnt > 0).view(n_rows, n_cols)


def column_balanced_mean(nll, rows, cols, n_rows: int, n_cols: int) -> torch.Tensor:
    """Mean over (row, column) cells of the cell's mean token NLL: a one-token class weighs as much as a
    seven-digit number, where a token mean would weigh the number seven times more."""
    means, keep = cell_means(nll, rows, cols, n_rows, n_cols)
    return means[keep].mean()


def kl_per_row(mu, logvar) -> torch.Tensor:
    """DiffLM's KL to N(0, I) per row [B]: the mean over latent dimensions."""
    return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1).mean(1)


class VAEOutput(NamedTuple):
    loss: torch.Tensor  # scalar: what the optimiser minimises
    nll: torch.Tensor  # [B] nats per row (the decoder's; the latent head's in a heads-only step)
    kl: torch.Tensor  # [B] DiffLM's KL per row (mean over latent dimensions)


class RowVAE(nn.Module):
    """The VAE as one module: q(z | row) (the text encoder) and p(row | z) (a :class:`RowModel`), with its loss.

    One ``forward`` is one training step's computation, so a data-parallel wrapper (DDP) can hold the whole
    model. Loss = reconstruction CE (``column_loss``: ``"token"`` mean over choices, the paper; ``"column"``
    mean over (row, column) cells) + ``aux_weight`` x the latent head's own CE (same averaging) + beta x KL.
    """

    def __init__(self, encoder: nn.Module, rows: RowModel, column_loss: str = "token", aux_weight: float = 0.0):
        super().__init__()
        self.encoder = encoder
        self.rows = rows
        self.column_loss = column_loss
        self.aux_weight = float(aux_weight) if rows.latent_head is not None else 0.0

    def _average(self, nll, rows, cols, n_rows):
        if self.column_loss == "column":
            return column_balanced_mean(nll, rows, cols, n_rows, self.rows.grammar.n_columns)
        return nll.mean()

    def forward(self, input_ids, attention_mask, features, toks, states, valid, eps, beta: float = 0.0,
                heads_only: bool = False, keep: torch.Tensor | None = None) -> VAEOutput:
        """One batch: encoder inputs (input_ids, attention_mask [B, T], features [B, F] or None), decoder
        targets (toks, states, valid [B, L]) and the reparameterisation noise eps [B, D] (zeros: the
        posterior means). ``heads_only`` runs the text encoder's backbone without gradients and skips the
        decoder: the cheap auxiliary step that trains the encoder head and the latent head on the head's CE.
        keep [B] (latent dropout): 0 for rows whose reconstruction is scored without the latent's logits,
        so the decoder and its read-out learn to write a coherent row from the columns written so far.
        """
        dev = self.rows.device
        input_ids, attention_mask = input_ids.to(dev), attention_mask.to(dev)
        if heads_only:
            with torch.no_grad():
                pooled = self.encoder.pooled(input_ids, attention_mask, features)
            mu, logvar = self.encoder.head_forward(pooled)  # [B, D] each
        else:
            mu, logvar = self.encoder(input_ids, attention_mask, features)
        z = mu + eps.to(mu.device) * (0.5 * logvar).exp()  # [B, D]
        kl = kl_per_row(mu, logvar)  # [B]
        B = len(toks)
        loss = beta * kl.mean()
        if self.aux_weight or heads_only:
            head = self.rows.head_nll(z, toks, states, valid)  # (nll [M], row [M], column [M])
            loss = loss + self.aux_weight * self._average(*head, B)
        choices = head if heads_only else self.rows(z, toks, states, valid, keep)
        if not heads_only:
            loss = loss + self._average(*choices, B)
        nll = torch.zeros(B, device=choices[0].device).index_add(0, choices[1], choices[0])
        return VAEOutput(loss, nll, kl)

    def _row_average(self, nll, rows, cols, n_rows):
        """Each row's own average [B] (of its cells' mean NLL, or of its tokens): a row's loss that no other
        row of the batch changes, as DP-SGD's per-row gradients need."""
        if self.column_loss == "column":
            means, keep = cell_means(nll, rows, cols, n_rows, self.rows.grammar.n_columns)
            return means.sum(1) / keep.sum(1).clamp(min=1)
        tot = torch.zeros(n_rows, device=nll.device).index_add(0, rows, nll)
        return tot / torch.zeros(n_rows, device=nll.device).index_add(0, rows, torch.ones_like(nll)).clamp(min=1)

    def private_grads(self, input_ids, attention_mask, features, toks, states, valid, eps, beta: float,
                      heads_only: bool, params: list) -> tuple[list, torch.Tensor]:
        """Each row's gradient of its own loss (beta x KL + aux x head CE + CE, as :meth:`forward`) for
        ``params``, the trained parameters between the backbone and the frozen decoder (the backbone must
        be frozen). Returns ([B, *p.shape] per parameter, nll [B]).

        One batched pass through the decoder: rows do not interact, so the gradient of the summed row losses
        at the latent path's outputs (mu, logvar, the decoder's inputs, the latent head's table) is each
        row's own; torch.func then pulls it back through the small latent path row by row (vmap of vjp).
        """
        from torch.func import functional_call, vjp, vmap

        dev = self.rows.device
        with torch.no_grad():
            pooled = self.encoder.pooled(input_ids.to(dev), attention_mask.to(dev), features)  # [B, hidden + F]
            path = LatentPath(self.encoder, self.rows, heads_only)
            outs = path(pooled, eps.to(dev))
        leaves = {k: v.detach().requires_grad_() for k, v in outs.items()}
        B = len(toks)
        loss = beta * kl_per_row(leaves["mu"], leaves["logvar"])  # [B]
        if self.aux_weight or heads_only:
            head = self.rows.head_nll_given(leaves["table"], toks, states, valid)
            loss = loss + self.aux_weight * self._row_average(*head, B)
        inputs = {k: leaves.get(k) for k in ("prefix", "offset", "kv", "table")}  # what z feeds the decoder
        choices = head if heads_only else self.rows.nll_given(inputs, toks, states, valid)
        if not heads_only:
            loss = loss + self._row_average(*choices, B)
        nll = torch.zeros(B, device=dev).index_add(0, choices[1], choices[0].detach())
        keys = list(leaves)
        cots = [torch.zeros_like(leaves[k]) if g is None else g
                for k, g in zip(keys, torch.autograd.grad(loss.sum(), [leaves[k] for k in keys], allow_unused=True))]
        named = {n: p.detach() for n, p in path.named_parameters()}

        def one(pooled_r, eps_r, *cot_r):  # one row: the latent path's vector-Jacobian product with its cotangents
            _, pull = vjp(lambda ps: tuple(functional_call(path, ps, (pooled_r[None], eps_r[None])).values()), named)
            return pull(tuple(c[None] for c in cot_r))[0]

        grads = vmap(one)(pooled, eps.to(dev), *cots)
        name_of = {id(p): n for n, p in path.named_parameters()}
        return [grads[name_of[id(p)]] if id(p) in name_of else torch.zeros(B, *p.shape, device=p.device)
                for p in params], nll

    def generate(self, z: torch.Tensor, *args, **kwargs):
        """Rows from latents z [B, D]: :meth:`RowModel.generate`, through the same logits as training."""
        return self.rows.generate(z, *args, **kwargs)


class LatentPath(nn.Module):
    """The trained part between the text encoder's backbone and the frozen decoder, as one module: pooled
    reading [B, hidden + F] and noise eps [B, D] -> {mu, logvar [B, D], and what z feeds the decoder:
    prefix, offset, kv (:meth:`RowModel.latent_inputs`), table}; entries the model lacks are left out.
    It holds the encoder's head, the injector and the latent head (the same modules, not copies), so
    torch.func can differentiate it with respect to their parameters alone."""

    def __init__(self, encoder, rows: RowModel, heads_only: bool = False):
        super().__init__()
        object.__setattr__(self, "_encoder", encoder)  # for head_forward; its backbone is not registered here
        self.head = encoder.head
        self.latent_head = rows.latent_head
        self.injector = None if heads_only else rows.injector
        object.__setattr__(self, "_rows", rows)

    def forward(self, pooled, eps):
        mu, logvar = self._encoder.head_forward(pooled)
        z = mu + eps * (0.5 * logvar).exp()  # [B, D]
        out = {"mu": mu, "logvar": logvar}
        if self.injector is not None:
            out.update(self._rows.latent_inputs(z))
        elif self.latent_head is not None:
            out["table"] = self.latent_head(z)
        return {k: v for k, v in out.items() if v is not None}
