"""The TabSyn baseline trains for the epochs asked and samples rows with the training columns, dtypes and
categories."""
from benchmarks.baselines.tabsyn import TabSyn


def test_tabsyn_fits_and_samples(adult_small):
    df = adult_small.iloc[:150]
    m = TabSyn(seed=0, vae_epochs=30, diffusion_steps=30, batch_size=256).fit(df, budget_s=60)
    out = m.sample(40)
    assert list(out.columns) == list(df.columns) and (out.dtypes == df.dtypes).all() and len(out) == 40
    for c in df.columns:
        if df[c].dtype == object:
            assert set(out[c]) <= set(df[c])
    assert m.vae_epochs_run_ == 30
