# chest-ct, both sides again with another seed (MONAI: weights, shuffling, flips; medclass: train.seed),
# at commit 072c8c1 (the default recipe: data.intensity fixed), same manifest as the seed-0 run.
python benchmarks/recipe_vs_monai.py ../shared/data/chest-ct --budget 15 --seed 1 \
    --medclass-args "--set train.seed=1" --out benchmarks/results/seed1/recipe_vs_monai-chest-ct.json
