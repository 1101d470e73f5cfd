"""Row grammar: the automata that define which rows may be written (``automata``) and the same grammar
compiled to tensor tables for the model's forward pass and the sampler (``compiled``)."""
from .automata import (END, CategoricalGrammar, DatetimeGrammar, InvalidValue, Link, MAX_POSITIONS, NumericGrammar,
                       RowGrammar, char_token)
from .compiled import CompiledGrammar

__all__ = ["END", "CategoricalGrammar", "CompiledGrammar", "DatetimeGrammar", "InvalidValue", "Link", "MAX_POSITIONS",
           "NumericGrammar", "RowGrammar", "char_token"]
