"""Merge `veil eval --json` reports of disjoint image sets (e.g. chunks of one split run one after
another) into one table, summing faces, disrupted faces and MSE per row and variant.

    python bench/merge_eval.py eval1.json eval2.json ... [--markdown]
"""

import argparse
import json


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("reports", nargs="+")
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args()
    rows, order, images, no_face, seconds, quality = {}, [], 0, 0, 0.0, {}
    for path in args.reports:
        with open(path) as f:
            r = json.load(f)
        images += r["images"]
        no_face += r["no_face"]
        seconds += r["seconds"]
        for v, q in r["quality"].items():
            acc = quality.setdefault(v, [0.0, 0.0, 0])
            acc[0] += q["psnr"] * r["images"]
            acc[1] += q["ssim"] * r["images"]
            acc[2] += r["images"]
        for row in r["rows"]:
            key = (row["generator"], row["condition"], row["defense"])
            if key not in rows:
                rows[key] = {"role": row["role"], "variants": {}}
                order.append(key)
            for v, c in row["variants"].items():
                acc = rows[key]["variants"].setdefault(v, [0, 0, 0.0])
                acc[0] += c["faces"]
                acc[1] += c["disrupted"]
                acc[2] += c["mean_mse"] * c["faces"]
    variants = ["veil", "noise", "single", "no-spread"]
    sep = " | " if args.markdown else "  "
    head = ["generator", "role", "condition", "defense"] + variants
    print(f"{images} images, {no_face} without a detected face, {seconds:.0f} s of eval; % disrupted (MSE >= 0.05) and mean MSE")
    if args.markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
    else:
        print(f"{'generator':<12}{'role':<9}{'condition':<16}{'defense':<15}" + "".join(f"{v:>18}" for v in variants))
    for key in order:
        g, c, d = key
        row = rows[key]
        cells = []
        for v in variants:
            faces, dis, mse = row["variants"].get(v, [0, 0, 0.0])
            cells.append(f"{100 * dis / max(faces, 1):5.1f}% {mse / max(faces, 1):.4f}")
        if args.markdown:
            print("| " + " | ".join([g, row["role"], c, d] + cells) + " |")
        else:
            print(f"{g:<12}{row['role']:<9}{c:<16}{d:<15}" + "".join(f"{x:>18}" for x in cells))
    print("image quality on the face crop:", ", ".join(
        f"{v} PSNR {q[0] / q[2]:.2f} dB SSIM {q[1] / q[2]:.4f}" for v, q in quality.items()))


if __name__ == "__main__":
    main()
