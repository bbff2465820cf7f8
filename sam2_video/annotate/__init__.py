"""`sam2-video annotate`: a local browser page to prompt, propagate, correct and export video masks.

`cli` parses the command and starts the server, `model` builds the predictor from a checkpoint,
`session` drives the predictor (clicks, boxes, undo, objects) and `propagation` its background
propagation, `store` saves every change in the output folder, `export` writes the datasets,
`frames` serves the video's frames as JPEG, `server` is the Starlette app and `static/` the page.
"""
