"""Model access: where the weights come from (`source`, `gguf`), loading and device placement (`loading`,
`placement`), the decoder layers and residual writers of each transformers family (`families`, `experts`), chat
formatting, batching and generation (`generation`, `thinking`) and re-use of unedited leading layers (`prefix`)."""
