"""Held-out evaluation of a model stage (`stage`): refusal detectors (`refusal`, `refusal_neural`, `embedding`),
multiple-choice capability (`capability`, `cloze`), self-consistency hallucination (`hallucination`), interval
statistics (`stats`) and the A/B summary of variants (`ab`)."""
