"""What several steps share: `records` (the TFRecord formats, their writers and readers),
`transform` (the one scaling, in training and in the served graph), `digits` (users' images
to MNIST form, for ingest's extra images, `predict` and `infer`) and `versions` (the
installed packages a manifest and a model card record)."""
