"""One module per pipeline stage, each exposing ``run(cfg, ...) -> list[Path]``.

In data order: fetch, prepare, anonymize, ssim, export, train, evaluate,
finetune, relabel, report.
"""
