#!/usr/bin/env python3
"""PyTorch (cuDNN) timings of conv2d / conv_transpose2d / weight grad at the ref-cifar sizes,
f32 (TF32 off) and bf16 autocast, CUDA events, median of repeats after warm-up."""
import sys
import torch

def median_ms(fn, reps=20):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record(); b.synchronize()
        ts.append(a.elapsed_time(b))
    ts.sort()
    return ts[len(ts) // 2]

def main():
    if not torch.cuda.is_available():
        print("SKIP: torch sees no GPU"); return
    batch = int(sys.argv[1]) if len(sys.argv) > 1 else 256
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    print("torch", torch.__version__, "cudnn", torch.backends.cudnn.version(), torch.cuda.get_device_name())
    print(f"{'op':<22} {'mode':<6} {'shape':>20} {'ms':>9} {'GFLOP/s':>10}")
    F = torch.nn.functional
    for c, hw in [(32, 32), (64, 16), (112, 8)]:
        x = torch.randn(batch, c, hw, hw, device="cuda")
        k = torch.randn(c, c, 3, 3, device="cuda") / (9 * c) ** 0.5
        flop = 2.0 * batch * c * hw * hw * c * 9
        shape = f"[{batch}, {c}, {hw}, {hw}]"
        for mode in ["f32", "bf16"]:
            ctx = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if mode == "bf16" else torch.no_grad
            def fwd():
                with ctx():
                    F.conv2d(x, k, padding=1)
            def tr():
                with ctx():
                    F.conv_transpose2d(x, k, padding=1)
            def wg():
                with ctx():
                    torch.nn.grad.conv2d_weight(x, k.shape, x, padding=1)
            for name, fn in [("conv2d", fwd), ("conv_transpose2d", tr), ("conv2d_weight", wg)]:
                ms = median_ms(fn)
                print(f"{name:<22} {mode:<6} {shape:>20} {ms:9.3f} {flop / ms / 1e6:10.1f}")

if __name__ == "__main__":
    main()
