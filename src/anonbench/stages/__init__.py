"""One module per pipeline stage, in data order: fetch, prepare, anonymize, ssim, export,
train, evaluate, finetune, relabel, report. Each exposes ``run(cfg, ...) -> list[Path]``.
"""
