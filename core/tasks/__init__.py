"""Task adapters: each task is preprocess → forward → postprocess over one mini-batch."""
