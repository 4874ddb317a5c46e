"""Why the ensemble's other generators stay undisrupted: bench/results/ensemble-balance-cpu-2026-11-27.md.

    python bench/ensemble_probe.py stargan,attgan,ganimation     (from the repository root, with .venv)

Eager PGD (ε 0.05, IT steps of 0.01, random start, one δ per face) on the first N CelebA val faces
(../shared/data/celeba, read in place), at the aligned crop's 178 px, resized (antialiased bilinear) to
the generators' 128 px inside the loss, against the manifest's attacked conditions of the listed
committed generators at once; then reports, per generator, the mean MSE and the share of face x
paper-condition pairs past 0.05. MODE: `sum` (plain MSE summed over generators), `focus` (Veil's
focused loss, focus 1), `norm` (each generator's gradient divided by its L1 norm before the sum).
BLUR=1: every other step goes through a Gaussian blur σ 1.5 (against the clean face's blurred
output), as a spread does; SHARP=a,b: except for those generators. Q95=1: the adversarial faces are rounded to 8 bits and saved as JPEG q95
4:4:4 before they are judged, as Veil writes them.
"""
import io
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
ROOT=os.path.dirname(os.path.dirname(os.path.abspath(__file__))); sys.path.insert(0, ROOT+"/bench"); sys.path.insert(0, ROOT+"/models/train")
import reference as R, data as D
torch.set_num_threads(2); torch.manual_seed(0)
gens = {g[0]: g for g in R.load(ROOT+"/models", "cpu")}
N=int(os.environ.get("N","8")); IT=int(os.environ.get("IT","10")); EPS=0.05; MODE=os.environ.get("MODE","sum")
BLUR=os.environ.get("BLUR")
DATA=ROOT+"/../shared/data/celeba"
rows=D.first_rows(DATA, "val", N)
x=torch.cat([D.photo(DATA, r)[:,:,20:198,:] for r in rows]); cp=torch.cat([D.row_targets(r) for r in rows])
rs=lambda t: F.interpolate(t,size=(128,128),mode="bilinear",antialias=True)
names=sys.argv[1].split(",")
def rowsof(name, xin, conds):  # conds: "paper" or "manifest"
    _,G,S,Cm=gens[name]; C=Cm.shape[1]
    if C==0: return G, xin, torch.zeros(N,0)
    if conds=="paper": return G, xin.repeat_interleave(5,0), cp
    return G, xin.repeat_interleave(Cm.shape[0],0), Cm.repeat(N,1)
def T(t, k):
    if not BLUR: return t
    return R.gaussian(t, 1.5) if k%2 else t
tg={}
for n in names:
    G,xa,ca=rowsof(n, x, "manifest")
    with torch.no_grad(): tg[n]=(G(rs(xa),ca), G(rs(T(xa,1)),ca))
d=(torch.rand_like(x)*2-1)*EPS
for i in range(IT):
    d.requires_grad_(True); grads=[]; total=0
    for n in names:
        G,xa,ca=rowsof(n, (x+d).clamp(-1,1), "manifest")
        blurred = BLUR and n not in os.environ.get("SHARP", "").split(",")
        out=G(rs(T(xa,i) if blurred else xa),ca); m=((out-tg[n][i%2 if blurred else 0])**2).flatten(1).mean(1)
        if MODE=="focus": l=torch.sigmoid(torch.log(m.clamp_min(1e-12)/0.05)).mean()
        else: l=m.mean()
        if MODE=="norm":
            g,=torch.autograd.grad(l,d,retain_graph=True); grads.append(g/g.abs().sum())
        else: total=total+l
    if MODE=="norm": g=sum(grads)
    else: g,=torch.autograd.grad(total,d)
    d=(d.detach()+0.01*g.sign()).clamp(-EPS,EPS)
def q95(t):
    out=[]
    for im in t:
        a=((im.permute(1,2,0)+1)*127.5).round().clamp(0,255).byte().numpy()
        b=io.BytesIO(); Image.fromarray(a).save(b,"JPEG",quality=95,subsampling=0); b.seek(0)
        out.append(torch.from_numpy(np.asarray(Image.open(b),dtype=np.float32)).permute(2,0,1)/127.5-1)
    return torch.stack(out)
with torch.no_grad():
    xadv=(x+d).clamp(-1,1)
    if os.environ.get("Q95"): xadv=q95(xadv); x=q95(x) if os.environ.get("QCLEAN") else x
    for n in names:
        G,xa,ca=rowsof(n,xadv,"paper"); G,x0,_=rowsof(n,x,"paper")
        m=((G(rs(xa),ca)-G(rs(x0),ca))**2).flatten(1).mean(1)
        print(f"{MODE} {sys.argv[1]}: {n} mean MSE {m.mean():.4f} >=0.05 {100*(m>=0.05).float().mean():.0f}%", flush=True)
