"""The kit's shared library, used by the kernel, training, the ensemble and the benchmarks; no command lines.

`io` (atomic writes), `config` (the one settings loader), `video` (frame sampling and decoders), `mtcnn` and `faces`
(detection, person tracks, the one crop and the one model input), `models` (classifiers and the weights manifest),
`aggregate` (frame → video scores, the stacker), `metrics` and `plots`. `aggregate`, `metrics` and `io` need no torch.
"""
