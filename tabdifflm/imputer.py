"""scikit-learn transformer that fills missing cells with DiffLM (``sample_remaining_columns``)."""
from __future__ import annotations

import numpy as np
import torch
from sklearn.base import TransformerMixin
from sklearn.utils.validation import check_is_fitted

from .schema import check_frame
from .synthesizer import DiffLMSynthesizer


class DiffLMImputer(TransformerMixin, DiffLMSynthesizer):
    """Fill missing cells consistently with the observed ones of the same row.

    Takes every parameter of :class:`DiffLMSynthesizer`. ``fit(X)`` fits DiffLM on X (its missing cells
    included: the model learns where values go missing too, but never writes a missing value into a cell
    it fills); ``transform(X)`` returns X with every missing cell filled and every observed cell unchanged,
    as a DataFrame with X's index and the training columns and dtypes.

        make_pipeline(DiffLMImputer(max_time=600), HistGradientBoostingClassifier())
    """

    def fit(self, X, y=None):
        super().fit(X)
        return self

    def transform(self, X):
        check_is_fitted(self)
        df = check_frame(X)
        if list(df.columns) != list(self.feature_names_in_):
            raise ValueError(f"X has columns {list(df.columns)}; the imputer was fitted on "
                             f"{list(self.feature_names_in_)}")
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=self._sample_gen))
        return self.sample_remaining_columns(df, random_state=seed, never_missing=True)

    def get_feature_names_out(self, input_features=None):
        check_is_fitted(self)
        return np.asarray(self.feature_names_in_, dtype=object)
