"""The baseline of bench/serve_load.py: the same model behind a plain FastAPI handler that runs
``transformers.pipeline`` on one request at a time (what a hand-written service usually is).

    python bench/_pipeline_server.py MODEL_DIR PORT THREADS
"""

from __future__ import annotations

import sys
import threading

import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel
from transformers import pipeline

model_dir, port, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
classifier = pipeline("text-classification", model=model_dir, device="cpu")
lock = threading.Lock()  # one request at a time: pipelines are not made for concurrent calls
app = FastAPI()


class Texts(BaseModel):
    texts: list[str]


@app.post("/v1/classify")
def classify(req: Texts):
    with lock:
        return {"results": classifier(req.texts)}


@app.get("/health")
def health():
    return {"status": "ok"}


uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
