"""The floor under everything: the error type of bad input
(:mod:`.errors`), the output rule and atomic writes (:mod:`.outputs`),
checkpoint files (:mod:`.checkpoint`), FLOPs counting (:mod:`.flops`), the
table renderer (:mod:`.tables`). Each name is imported from its module."""
