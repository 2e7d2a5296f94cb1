"""A fresh process to its first generated token: prints FIRST_TOKEN then exits (start-up time).

python benchmarks/peers/first_token.py medvllm --profile auto [--method dynamic] [--model FILE.gguf]
python benchmarks/peers/first_token.py transformers --dtype float32 [--model FILE.gguf]
"""

import argparse
import os
import sys

ap = argparse.ArgumentParser()
ap.add_argument("system", choices=["medvllm", "transformers"])
ap.add_argument("--profile", default="auto")
ap.add_argument("--method", help="quantization_method over the profile's")
ap.add_argument("--model", help="a GGUF file (default: the embedded model)")
ap.add_argument("--dtype", default="float32")
ap.add_argument("--threads", type=int, default=2)
args = ap.parse_args()

import torch  # noqa: E402

torch.set_num_threads(args.threads)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_systems  # noqa: E402

if args.system == "medvllm":
    from medvllm import SamplingParams

    llm, _ = torch_systems.build_medvllm(args.profile, prefix_caching=False, model=args.model, method=args.method)
    llm.generate("Sepsis is", SamplingParams(temperature=0, max_tokens=1))
else:
    model = torch_systems.load_hf(torch_systems.DTYPES[args.dtype], args.model)
    model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=1, do_sample=False, pad_token_id=0)
print("FIRST_TOKEN", flush=True)
