"""The served-system evaluation end to end on the embedded model, with a random small LoRA adapter.

A stand-in for a trained run when none can be trained in time: builds a run folder (quickstart's
resolved config with general suites off, a random LoRA r16 with B ~ N(0, 2e-3), the router
calibrated as the pipeline does on the sample domain's training texts), then runs
``add_served_section`` (what ``forgetless eval --served`` computes) and prints the section.
Domain recall is meaningless here (the adapter learned nothing); routing, KL and the plumbing are real.

    PYTHONPATH=src .venv/bin/python bench/served_random_adapter.py
"""
import sys, time, torch
from pathlib import Path
ROOT=Path(__file__).resolve().parents[1]; sys.path.insert(0,str(ROOT/'src'))
from forgetless.config import load_config, dump_config
from forgetless import artifacts
from forgetless.models import load_model, load_tokenizer
from forgetless.io import read_jsonl
from forgetless.serve.router import calibrate_router
from forgetless.evaluate.drift import load_general_prompts
from forgetless.evaluate.served import add_served_section
from peft import LoraConfig, get_peft_model
run=Path(sys.argv[1] if len(sys.argv) > 1 else '/tmp/served_random_adapter'); run.mkdir(parents=True, exist_ok=True); t0=time.time()
cfg=load_config(ROOT/'examples/quickstart.yaml',[f'run_dir={run}','eval.general_suites=[]'])
(run/artifacts.RESOLVED_CONFIG).write_text(dump_config(cfg))
tok,base=load_tokenizer(cfg.model.name),load_model(cfg.model.name)
torch.manual_seed(0)
pm=get_peft_model(base,LoraConfig(r=16,lora_alpha=32,target_modules=["q_proj","k_proj","v_proj","o_proj","gate_proj","up_proj","down_proj"]))
with torch.no_grad():
    for n,p in pm.named_parameters():
        if 'lora_B' in n: p.normal_(0,2e-3)
pm.save_pretrained(run/artifacts.ADAPTER_DIR)
P=ROOT/'examples/data/pharma'
dom=[r['messages'][0]['content'] for r in read_jsonl(P/'train_qa.jsonl')]+[r['text'] for r in read_jsonl(P/'docs.jsonl')]
info=calibrate_router(pm,tok,dom,[p['prompt'] for p in load_general_prompts()],run,batch_size=64)
print('router',{k:info[k] for k in ('method','calibration_auroc','domain_to_base','general_to_base')}, time.time()-t0, flush=True)
del pm, base
(run/artifacts.REPORT_MD).write_text('# random-adapter check\n')
rep=add_served_section(run)
print(open(run/artifacts.REPORT_MD).read()); print(time.time()-t0)
