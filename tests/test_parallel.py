"""Training under torchrun: two CPU processes (gloo) fit the same model, only rank 0 writes it."""
import json
import socket
import subprocess
import sys
import textwrap

import pandas as pd
import torch

from tabdifflm import DiffLMSynthesizer
from tabdifflm.persistence import read_model_file

WORKER = textwrap.dedent("""
    import hashlib, json, sys
    import pandas as pd
    import torch.distributed as dist
    from tabdifflm import DiffLMSynthesizer, parallel

    wrapped = []  # what the training loop's module became: DistributedDataParallel under torchrun
    _wrap = parallel.data_parallel

    def spy(module):
        net = _wrap(module)
        wrapped.append(type(net).__name__)
        return net

    parallel.data_parallel = spy

    kwargs, data, out = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
    df = pd.read_pickle(data)
    sums = []
    for run in range(2):  # the same seed twice: the same model
        s = DiffLMSynthesizer(**kwargs).fit(df)
        part = {}
        for name, m in (("encoder", s.encoder_), ("injector", s.injector_), ("head", s.latent_head_),
                        ("denoiser", s.denoiser_)):
            h = hashlib.sha256()
            for k, v in sorted(m.state_dict().items()):
                h.update(v.detach().float().numpy().tobytes())
            part[name] = h.hexdigest()[:16]
        sums.append(part)
        s.save(f"{out}/model{run}_rank{dist.get_rank()}.tdl")
    rows = s.sample(11, random_state=0)  # split between the processes, gathered on both
    rows.to_pickle(f"{out}/rows_rank{dist.get_rank()}.pkl")
    with open(f"{out}/rank{dist.get_rank()}.json", "w") as f:
        json.dump({"sums": sums, "wrapped": wrapped, "stats": s.last_sample_stats_, "world": dist.get_world_size(), "steps": s.history_["vae"][-1]["step"]}, f)
""")


def test_two_processes_train_one_model_and_only_rank_0_writes_it(tmp_path, tiny_kwargs, mixed_df):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    mixed_df.to_pickle(tmp_path / "data.pkl")
    kwargs = {**tiny_kwargs, "max_epochs": 2, "random_state": 3}
    with socket.socket() as s:  # a port free now: a fixed one may still be held by an earlier run
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
           str(script), json.dumps(kwargs, default=str), str(tmp_path / "data.pkl"), str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                         env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    assert r0["wrapped"] == r1["wrapped"] == ["DistributedDataParallel"] * 2
    assert r0["sums"] == r1["sums"]  # gradients averaged: both processes hold the same weights
    assert r0["sums"][0] == r0["sums"][1]  # the same seed gives the same model
    single = DiffLMSynthesizer(**kwargs).fit(mixed_df)
    # each step saw the whole batch, split in two: as many steps as one process
    assert r0["steps"] == single.history_["vae"][-1]["step"]
    assert sorted(p.name for p in tmp_path.glob("*.tdl")) == ["model0_rank0.tdl", "model1_rank0.tdl"]
    a, _ = read_model_file(tmp_path / "model0_rank0.tdl")
    b, _ = read_model_file(tmp_path / "model1_rank0.tdl")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # sampling split too: each process wrote its share (6 + 5), both return all 11 rows, the same ones
    assert [r0["stats"]["rows_this_process"], r1["stats"]["rows_this_process"]] == [6, 5]
    a, b = (pd.read_pickle(tmp_path / f"rows_rank{r}.pkl") for r in (0, 1))
    assert len(a) == 11 and a.equals(b) and list(a.columns) == list(mixed_df.columns)
    assert not a.iloc[:5].reset_index(drop=True).equals(a.iloc[6:].reset_index(drop=True))  # two seed streams
    loaded = DiffLMSynthesizer.load(tmp_path / "model0_rank0.tdl")
    assert len(loaded.sample(5, random_state=0)) == 5
