import pytest
import torch
from transformers import AutoModelForCausalLM

from tabdifflm.grammar import RowGrammar
from tabdifflm.injection import Injector
from tabdifflm.model import RowModel
from tabdifflm.schema import frame_rows, infer_schema
from tabdifflm.serialization import RowFormat
from tabdifflm.training import pad_batch, reconstruction_nll


@pytest.fixture(scope="module")
def tiny_decoder(tiny_decoder_dir):
    m = AutoModelForCausalLM.from_pretrained(tiny_decoder_dir, dtype=torch.float32).eval()
    m.requires_grad_(False)
    return m


@pytest.mark.parametrize("method", ["soft_prompt", "kv_memory", "embedding"])
def test_latent_reaches_the_frozen_decoder(method, tiny_decoder, smol_tokenizer, adult_small):
    s = infer_schema(adult_small)
    g = RowGrammar(RowFormat("values", s), smol_tokenizer)
    enc = [g.encode(r) for r in frame_rows(adult_small.iloc[:4], s)]
    toks, sts, valid = pad_batch([e[0] for e in enc], [e[1] for e in enc], g.done)
    inj = Injector(method, 6, tiny_decoder, n_soft_tokens=3, n_prefix_tokens=2)
    z = torch.randn(4, 6, requires_grad=True)
    model = RowModel(tiny_decoder, inj, g)
    nll, n_tok = reconstruction_nll(model, z, toks, sts, valid)
    assert nll.shape == (4,) and n_tok > 0 and torch.isfinite(nll).all()
    nll.sum().backward()
    assert z.grad.abs().sum() > 0  # the loss depends on the latent
    assert inj.proj.weight.grad.abs().sum() > 0 and inj.prefix.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny_decoder.parameters())
    nll2, _ = reconstruction_nll(model, z.detach() + 1.0, toks, sts, valid)
    assert not torch.allclose(nll, nll2)


@pytest.mark.parametrize("method", ["soft_prompt", "kv_memory", "embedding"])
def test_cached_greedy_generation_matches_a_full_forward_pass(method, tiny_decoder, smol_tokenizer, adult_small):
    """Each greedy token written with the KV cache is the argmax of the allowed logits of one uncached pass."""
    from tabdifflm.decoder import decoder_parts, run_base

    s = infer_schema(adult_small)
    g = RowGrammar(RowFormat("values", s), smol_tokenizer)
    inj = Injector(method, 6, tiny_decoder, n_soft_tokens=3, n_prefix_tokens=2)
    z = torch.randn(3, 6)
    rows = RowModel(tiny_decoder, inj, g).generate(z, temperature=0)
    base, head = decoder_parts(tiny_decoder)
    emb = tiny_decoder.get_input_embeddings()
    with torch.no_grad():
        for b, r in enumerate(rows):
            g.decode(r)  # complete and valid
            zb = z[b:b + 1]
            x = emb(torch.tensor([r[:-1]]))
            if inj.token_offset(zb) is not None:
                x = x + inj.token_offset(zb)
            h, _ = run_base(base, torch.cat([inj.prefix_embeds(zb), x], 1), inj.memory(zb, torch.float32))
            logits = head(h[0, inj.n_prefix - 1:])
            mask = torch.zeros_like(logits, dtype=torch.bool)
            for j, sid in enumerate(_states(g, r)):  # the Python automaton, not the compiled mask
                mask[j, list(g.allowed(sid))] = True
            best = logits.masked_fill(~mask, float("-inf")).argmax(-1)
            assert best.tolist() == r


def _states(g, toks):
    out, sid = [], g.start
    for t in toks:
        out.append(sid)
        sid = g.next_state(sid, t)
    return out


def test_grouped_decode_attention_matches_sdpa(tiny_decoder_dir):
    """The sampler's one-token attention kernel gives what transformers' SDPA gives, step after step."""
    from tabdifflm.decoder import load_decoder, run_base

    m, _, _ = load_decoder(tiny_decoder_dir, torch.float32, torch.device("cpu"))
    assert m.config._attn_implementation == "tabdifflm_gqa"
    torch.manual_seed(0)
    x0, steps = torch.randn(3, 5, m.config.hidden_size), torch.randn(6, 3, 1, m.config.hidden_size)
    out = {}
    for impl in ("sdpa", "tabdifflm_gqa"):
        m.set_attn_implementation(impl)
        with torch.no_grad():
            h, cache = run_base(m.base_model, x0, None, True)
            for x in steps:
                h, cache = run_base(m.base_model, x, cache, True)
        out[impl] = h
    assert torch.allclose(out["sdpa"], out["tabdifflm_gqa"], atol=1e-5)
