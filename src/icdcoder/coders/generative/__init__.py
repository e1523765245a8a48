"""Generative coders: a causal LM reads a note and writes its code set (``<code>C1, C2</code>``).

``answer`` (format and parser), ``prompts`` (chat prompts, truncation), ``backends`` (transformers,
vLLM, OpenAI-compatible endpoints), ``tiny`` (the small default LM built here), ``coder`` (the coders
under the common interface: prompting, SFT, GRPO, PHI).
"""
