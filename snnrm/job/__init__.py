"""Split SNN jobs from NIR graphs: ``snnrm job plan`` (docs/split-learning.md)."""
