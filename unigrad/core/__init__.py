"""The paper's parts: target branches, sample sets, loss forms, gradient forms, the
distributed helpers and the generic objective that combines them (names no method)."""
