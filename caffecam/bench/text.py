"""The bench's report in words: the text scripts/bench.py prints, and the markdown page (results/bench.md) with the
machine, the ratios against their goals, and the same text. A section that did not run (--only) prints nothing."""


def fmt(v, unit="", digits=1):
    if v is None:
        return "n/a"
    return f"{v:.{digits}f}{unit}"


def pct(v):
    return "n/a" if v is None else f"{100 * v:.1f}% of peak"


def sci(v):
    return "n/a" if v is None else f"{v:.1e}"


def machine_line(env):
    cpu = env.get("cpu", {})
    flags = ", ".join(cpu.get("flags", [])) or "none of note"
    return (f"{cpu.get('model', '?')}, {cpu.get('cores', '?')} usable cores ({env['torch_threads']} torch threads); "
            f"flags: {flags}; torch {env['torch']}, device {env['device']}")


def peak_lines(k):
    return [f"peak convolution throughput (oneDNN, channels_last): 3×3 {fmt(k['conv3x3_fp32_gflops'], '', 0)} GFLOP/s "
            f"fp32, {fmt(k['conv3x3_bf16_gflops'], '', 0)} bf16; 1×1 {fmt(k['conv1x1_fp32_gflops'], '', 0)} fp32, "
            f"{fmt(k['conv1x1_bf16_gflops'], '', 0)} bf16 (shapes: {'; '.join(k['shapes'])})"]


def train_lines(t, m):
    lines = [
        f"training, batch {t['batch']} (forward + backward + Caffe SGD), images/s:",
        f"  CPU fp32 contiguous      {fmt(t['cpu_fp32_contiguous_images_per_s'], '', 2)}",
        f"  CPU fp32 channels_last   {fmt(t['cpu_fp32_channels_last_images_per_s'], '', 2)}"
        f"   (×{fmt(t['cpu_channels_last_speedup'], '', 2)} vs contiguous)",
        f"  CPU fp32 channels_last, every convolution direct (no Winograd) "
        f"{fmt(t['cpu_fp32_channels_last_direct_conv_images_per_s'], '', 2)}"
        f"   (Winograd ×{fmt(t['cpu_winograd_speedup'], '', 2)})"]
    if m:
        lines.append(f"  CPU in a fresh process, channels_last: {fmt(m['cpu_images_per_s_keep_freed_memory'], '', 2)} "
                     f"with keep_freed_memory, {fmt(m['cpu_images_per_s_default_malloc'], '', 2)} with glibc's "
                     f"default malloc (×{fmt(m['keep_freed_memory_speedup'], '', 2)})")
    lines += [
        f"  GPU fp32 (TF32 off)      {fmt(t['gpu_fp32_images_per_s'])}",
        f"  GPU TF32 (--tf32)        {fmt(t['gpu_tf32_images_per_s'])}",
        f"  GPU bf16 + channels_last {fmt(t['gpu_bf16_channels_last_images_per_s'])}"
        f"   (goal {t['goal_gpu_bf16_images_per_s']:g})"]
    pl = t.get("pipeline")
    if pl:
        lines.append(f"  JPEG pipeline on {pl['device']} ({pl['precision']}, {pl['workers']} workers): "
                     f"{fmt(pl['images_per_s'], '', 2)} images/s, {fmt(100 * pl['data_wait_fraction'], '%')} of "
                     "step time waiting for data")
    return lines


def train_vs_caffe_lines(s):
    return [
        f"training side by side, same train_val, batch {s['batch']} and JPEGs ({s['timed_iterations']} iterations "
        f"timed in {s.get('rounds', 1)} alternating runs, each after {s['warmup_iterations']}), images/s:",
        f"  real Caffe (caffe train)  {fmt(s['caffe_images_per_s'], '', 2)}  ({pct(s['caffe_peak_fraction'])})",
        f"  train.py fp32             {fmt(s['ours_fp32_images_per_s'], '', 2)}  ({pct(s['ours_fp32_peak_fraction'])})"
        f"  ×{fmt(s['fp32_vs_caffe'], '', 2)} Caffe (goal ×{s['goal_fp32_vs_caffe']:g})",
        f"  train.py --bf16           {fmt(s['ours_bf16_images_per_s'], '', 2)}  ({pct(s['ours_bf16_peak_fraction'])})"
        f"  ×{fmt(s['bf16_vs_caffe_fp32'], '', 2)} Caffe fp32 (goal ×{s['goal_bf16_vs_caffe_fp32']:g})",
        "  fp32 ratio in each run: " + ", ".join(f"×{fmt(v, '', 2)}" for v in s.get("fp32_vs_caffe_by_round", []))]


def zoo_lines(z):
    lines = []
    for name, d in z.items():
        goals = ", ".join(f"{k[5:].replace('_vs_', ' vs ')} ≥ ×{v:g}" for k, v in d.items() if k.startswith("goal_"))
        lines += [
            f"{name} inference, batch {d['batch']} ({fmt(d['flops_per_image'] / 1e9, '', 2)} GFLOP/image, "
            f"{d['batch_norms_folded']} BatchNorms folded), images/s:" + (f" goals {goals}" if goals else ""),
            f"  ours fp32 {fmt(d['ours_fp32_images_per_s'], '', 2)} ({pct(d['ours_fp32_peak_fraction'])}), "
            f"bf16 {fmt(d['ours_bf16_images_per_s'], '', 2)} ({pct(d['ours_bf16_peak_fraction'])})"
            + (f", fp32 unfolded {fmt(d['ours_fp32_unfolded_images_per_s'], '', 2)} (folding "
               f"×{fmt(d['fold_speedup'], '', 2)})" if d["batch_norms_folded"] else ""),
            f"  OpenCV {d.get('opencv', '4')} DNN {fmt(d['cv4_images_per_s'], '', 2)} ({pct(d['cv4_peak_fraction'])}; "
            f"output within {sci(d['cv4_max_rel_diff'])} of ours): "
            f"ours fp32 ×{fmt(d['fp32_vs_cv4'], '', 2)}, bf16 ×{fmt(d['bf16_vs_cv4'], '', 2)}",
            f"  real Caffe (caffe time) {fmt(d['caffe_images_per_s'], '', 2)} ({pct(d['caffe_peak_fraction'])}): "
            f"ours fp32 ×{fmt(d['fp32_vs_caffe'], '', 2)}, bf16 ×{fmt(d['bf16_vs_caffe'], '', 2)}"]
    return lines


def scaling_lines(s):
    ti, ce = s["train_and_inference"], s["cam_end_to_end"]
    lines = ["how cost grows (fp32, channels_last), images/s (share of the fp32 peak):"]
    lines += [f"  batch {b:>3}: training {fmt(v['train_images_per_s'], '', 2)} ({pct(v['train_peak_fraction'])}), "
              f"inference {fmt(v['inference_images_per_s'], '', 2)} ({pct(v['inference_peak_fraction'])})"
              for b, v in ti.items()]
    lines += [f"  CAM end to end, {n:>3} image(s): {fmt(v['wall_s'], ' s', 2)}, {fmt(v['images_per_s'], '', 2)} "
              f"images/s ({pct(v['peak_fraction'])})" for n, v in ce.items()]
    return lines


def cam_lines(c):
    agree = "n/a" if c["torchcam_cam_max_rel_diff"] is None else (
        f"CAM max rel diff {c['torchcam_cam_max_rel_diff']:.1e}, GradCAM {c['torchcam_gradcam_max_rel_diff']:.1e}")
    return [
        f"CAM, batch {c['batch']} of {c['image_size']}×{c['image_size']} on {c['device']}, images/s:",
        f"  plain forward {fmt(c['forward_images_per_s'], '', 2)}, CamModel.run {fmt(c['cam_images_per_s'], '', 2)}"
        f" -> overhead ×{fmt(c['cam_overhead_ratio'], '', 3)} (goal ≤ ×{c['goal_cam_overhead_ratio']:g})",
        f"  per-channel loop {fmt(c['loop_images_per_s'], '', 2)} (CAM ×{fmt(c['cam_vs_loop'], '', 2)}); maps alone "
        f"{fmt(c['maps_ms'], ' ms', 2)} vs loop {fmt(c['loop_maps_ms'], ' ms')} (×{fmt(c['maps_vs_loop'], '', 0)})",
        f"  autograd Grad-CAM {fmt(c['gradcam_images_per_s'], '', 2)} (CAM ×{fmt(c['cam_vs_gradcam'], '', 2)})",
        f"  torchcam CAM {fmt(c['torchcam_cam_images_per_s'], '', 2)} (CAM ×{fmt(c['cam_vs_torchcam_cam'], '', 2)}), "
        f"torchcam GradCAM {fmt(c['torchcam_gradcam_images_per_s'], '', 2)} "
        f"(CAM ×{fmt(c['cam_vs_torchcam_gradcam'], '', 2)})",
        "  torchcam's maps against ours (unnormalized): " + agree]


def other_lines(r):
    lines = []
    if "inference" in r:
        i = r["inference"]
        lines.append(f"inference, deploy net batch {i['batch']} on {i['device']}: "
                     f"{fmt(i['contiguous_images_per_s'], '', 2)} images/s contiguous, "
                     f"{fmt(i['channels_last_images_per_s'], '', 2)} channels_last")
    if "cam_end_to_end" in r:
        e = r["cam_end_to_end"]
        lines.append(f"CAM end to end, {e['images']} JPEGs {e['image_size']}×{e['image_size']} with overlays "
                     f"written: run_cam {fmt(e['run_cam_images_per_s'], '', 2)} images/s, plain torchcam pipeline "
                     f"{fmt(e['torchcam_pipeline_images_per_s'], '', 2)} -> ×{fmt(e['speedup'], '', 2)} "
                     f"(goal ×{e['goal_speedup']:g})")
    if "loader" in r:
        d = r["loader"]
        lines.append(f"data loader, batch {d['batch']}, {d['workers']} workers, {d['source_size'][0]}×"
                     f"{d['source_size'][1]} JPEGs -> {d['resize']} -> crop {d['crop']}: JPEG files "
                     f"{fmt(d['jpeg_images_per_s'])} images/s, LMDB cache {fmt(d['lmdb_images_per_s'])} images/s")
    if "memory" in r:
        m = r["memory"]
        lines.append(
            f"memory of one training step: CPU {fmt(m['cpu_train_step_mb'], ' MiB', 0)} ({m['cpu_memory_format']}; "
            f"peak RSS {fmt(m['cpu_peak_mb'], ' MiB', 0)}; with glibc's default malloc "
            f"{fmt(m['cpu_train_step_mb_default_malloc'], ' MiB', 0)}, peak "
            f"{fmt(m['cpu_peak_mb_default_malloc'], ' MiB', 0)}), "
            f"GPU fp32 {fmt(m['gpu_fp32_train_step_mb'], ' MiB', 0)} "
            f"(peak {fmt(m['gpu_fp32_peak_mb'], ' MiB', 0)}), GPU bf16 "
            f"{fmt(m['gpu_bf16_channels_last_train_step_mb'], ' MiB', 0)} "
            f"(peak {fmt(m['gpu_bf16_channels_last_peak_mb'], ' MiB', 0)})")
    if "report" in r:
        p = r["report"]
        lines.append(
            f"CAM report page, {p['entries']:,} entries ({fmt(p['data_js_mb'], ' MiB', 2)} of data.js) in headless "
            f"Chromium from file://: first paint {fmt(p['first_paint_ms'], ' ms', 0)}, filter \"wrong only\" "
            f"{fmt(p['filter_ms'], ' ms', 0)}, search {fmt(p['search_ms'], ' ms', 0)}, detail view "
            f"{fmt(p['detail_ms'], ' ms', 0)} (goal < {p['goal_ms']:.0f} ms); written in {fmt(p['write_s'], ' s')} "
            f"({fmt(p['write_entries_per_s'], ' entries/s', 0)})")
    return lines


def report_text(r):
    lines = [f"GoogLeNet-CAM bench ({'quick smoke run' if r['quick'] else 'full'}"
             + (f", sections {', '.join(r['only'])}" if r.get("only") else "") + ")",
             "machine: " + machine_line(r["environment"])]
    if "peak" in r:
        lines += peak_lines(r["peak"])
    if "train" in r:
        lines += train_lines(r["train"], r.get("memory"))
    if "train_vs_caffe" in r:
        lines += train_vs_caffe_lines(r["train_vs_caffe"])
    if "zoo" in r:
        lines += zoo_lines(r["zoo"])
    if "scaling" in r:
        lines += scaling_lines(r["scaling"])
    if "cam" in r:
        lines += cam_lines(r["cam"])
    lines += other_lines(r)
    lines.append("time per section: " + ", ".join(f"{k} {v:.0f} s" for k, v in r["sections_s"].items())
                 + f"; total {r['total_s']:.0f} s")
    lines.append("load average (1 min) at each section's start: "
                 + ", ".join(f"{k} {fmt(v, '', 1)}" for k, v in r["load_average_1min"].items()))
    lines += [f"note: {n}" for n in r["notes"]]
    return "\n".join(lines)


PEER_NAMES = {"cv4": "OpenCV 4 DNN", "caffe": "real Caffe"}


def goal_rows(r):
    """(figure, ours images/s, peer images/s, ratio, goal) of every ratio with a goal, in the issues' order."""
    rows = []
    s = r.get("train_vs_caffe")
    if s:
        rows += [(f"training fp32, batch {s['batch']}, vs real Caffe", s["ours_fp32_images_per_s"],
                  s["caffe_images_per_s"], s["fp32_vs_caffe"], s["goal_fp32_vs_caffe"]),
                 (f"training bf16, batch {s['batch']}, vs real Caffe fp32", s["ours_bf16_images_per_s"],
                  s["caffe_images_per_s"], s["bf16_vs_caffe_fp32"], s["goal_bf16_vs_caffe_fp32"])]
    for name, d in r.get("zoo", {}).items():
        for key, goal in d.items():
            if key.startswith("goal_"):
                precision, peer = key[5:].split("_vs_")
                rows.append((f"{name} inference {precision}, batch {d['batch']}, vs {PEER_NAMES[peer]}",
                             d[f"ours_{precision}_images_per_s"], d[f"{peer}_images_per_s"], d[key[5:]], goal))
    if "cam_end_to_end" in r:
        e = r["cam_end_to_end"]
        rows.append((f"CAM end to end ({e['images']} JPEGs) vs a plain torchcam pipeline", e["run_cam_images_per_s"],
                     e["torchcam_pipeline_images_per_s"], e["speedup"], e["goal_speedup"]))
    return rows


def report_markdown(r):
    lines = ["# `make bench` report", "", f"Machine: {machine_line(r['environment'])}.", "",
             "| figure | ours, images/s | peer, images/s | ratio | goal |", "|---|---|---|---|---|"]
    for what, ours, peer, value, goal in goal_rows(r):
        lines.append(f"| {what} | {fmt(ours, '', 2)} | {fmt(peer, '', 2)} | ×{fmt(value, '', 2)} | ≥ ×{goal:g} |")
    lines += ["", "```", report_text(r), "```", ""]
    return "\n".join(lines)
