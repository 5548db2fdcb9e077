# tnbc_pipeline: every target installs what it needs into .venv first (built from pyproject.toml).
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TNBC   := $(BIN)/tnbc

# Stage variables (override on the command line: make dataset RAW=path ALPHA="110" SIGMA="8 10").
RELEASE := $(firstword $(wildcard raw/TNBC_NucleiSegmentation.zip raw/TNBC_NucleiSegmentation))
SYNTH   := raw/synthetic
RAW     ?= $(if $(RELEASE),$(RELEASE),$(SYNTH))
OUT     ?= dataset/TNBC
CONFIG  ?=
ALPHA   ?=
SIGMA   ?=
SEED    ?=
FOLDS   ?=
FOLD    ?=
WORKERS ?=
FORCE   ?=
SHARD_MB ?=
TRAIN_CONFIG ?= configs/quick.toml
RUN     ?= runs/$(basename $(notdir $(TRAIN_CONFIG)))
EPOCHS  ?=
SPLIT   ?= test
THRESHOLD ?=
INSTANCES ?=
MIN_AREA ?=
TTA     ?= 1
IMAGES  ?= $(OUT)/test/images
MASKS   ?= $(OUT)/test/masks
INFER_OUT ?= $(RUN)/infer
CV_OUT  ?= cv/$(basename $(notdir $(TRAIN_CONFIG)))
STUDY_OUT ?= study/$(basename $(notdir $(TRAIN_CONFIG)))
ELASTIC ?=
COMPRESSION ?=

DATASET_FLAGS = $(if $(CONFIG),--config $(CONFIG)) $(foreach a,$(ALPHA),--alpha $(a)) \
	$(foreach s,$(SIGMA),--sigma $(s)) $(if $(SEED),--seed $(SEED)) $(if $(FOLDS),--folds $(FOLDS)) \
	$(if $(FOLD),--fold $(FOLD)) $(if $(WORKERS),--workers $(WORKERS)) $(if $(FORCE),--force)

.PHONY: bench-zoo bench-train-options zoo help install synth dataset records verify-records train eval infer cv study all test bench bench-dataset bench-input bench-train bench-infer clean

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 is required"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,peers,slide]'
	touch $@

install: $(VENV)/.installed ## Build .venv from pyproject.toml (with the test, peers and slide extras)

$(SYNTH)/TNBC_NucleiSegmentation: | $(VENV)/.installed
	$(TNBC) synth --out $(SYNTH)

synth: $(SYNTH)/TNBC_NucleiSegmentation ## Write the synthetic release to raw/synthetic (the default RAW when raw/ has no release)

dataset: install $(if $(filter $(SYNTH),$(RAW)),synth) ## Split by patient + augment: RAW= OUT= CONFIG= ALPHA= SIGMA= SEED= FOLDS= FOLD= WORKERS= FORCE=1
	$(TNBC) dataset --raw $(RAW) --out $(OUT) $(DATASET_FLAGS)

records: install ## TFRecord shards + index.json from OUT (rebuilt only when the dataset changed): SHARD_MB= COMPRESSION= FORCE=1
	$(TNBC) records --dataset $(OUT) $(if $(SHARD_MB),--shard-mb $(SHARD_MB)) \
		$(if $(COMPRESSION),--compression $(COMPRESSION)) $(if $(FORCE),--force)

verify-records: install ## Re-hash every shard and parse every record
	$(TNBC) records --dataset $(OUT) --verify

train: install ## Train a U-Net on OUT/tfrecords into RUN: TRAIN_CONFIG= RUN= EPOCHS= SEED= FORCE=1
	$(TNBC) train --config $(TRAIN_CONFIG) --records $(OUT)/tfrecords --run-dir $(RUN) \
		$(if $(EPOCHS),--epochs $(EPOCHS)) $(if $(SEED),--seed $(SEED)) $(if $(FORCE),--force)

POST_FLAGS = $(if $(THRESHOLD),--threshold $(THRESHOLD)) $(if $(filter 1,$(TTA)),--tta,--no-tta) \
	$(if $(INSTANCES),--instances $(INSTANCES)) $(if $(MIN_AREA),--min-area $(MIN_AREA))
# what eval, cv and study choose the post-processing on valid by (aji, f1, pq or dice)
TUNE_FLAGS = $(if $(TUNE_BY),--tune-by $(TUNE_BY)) $(if $(TUNE_ON),--tune-on $(TUNE_ON))

eval: install ## Pixel + instance metrics of RUN on SPLIT (default test): SPLIT= THRESHOLD= TTA=0|1 INSTANCES= MIN_AREA= TUNE_BY= TUNE_ON=
	$(TNBC) eval --run-dir $(RUN) --records $(OUT)/tfrecords --split $(SPLIT) $(POST_FLAGS) $(TUNE_FLAGS)

infer: install ## Masks, probabilities, overlays for IMAGES into INFER_OUT (MASKS= adds metrics): THRESHOLD= TTA=0|1 INSTANCES= MIN_AREA=
	$(TNBC) infer --run-dir $(RUN) --images $(IMAGES) --out $(INFER_OUT) $(if $(MASKS),--masks $(MASKS)) $(POST_FLAGS)

all: dataset records train eval infer ## Install + the whole pipeline on RAW (the synthetic release by default); grows with each stage

cv: install $(if $(filter $(SYNTH),$(RAW)),synth) ## Grouped k-fold CV by patient on RAW into CV_OUT: FOLDS= FOLD= TRAIN_CONFIG= EPOCHS= SEED= INSTANCES= MIN_AREA= TTA=0|1 FORCE=1 PEERS="unet_plain stardist"
	$(TNBC) cv --raw $(RAW) --out $(CV_OUT) --folds $(or $(FOLDS),4) --train-config $(TRAIN_CONFIG) \
		$(foreach f,$(FOLD),--fold $(f)) $(if $(CONFIG),--dataset-config $(CONFIG)) $(if $(EPOCHS),--epochs $(EPOCHS)) \
		$(if $(SEED),--seed $(SEED)) $(POST_FLAGS) $(TUNE_FLAGS) $(if $(FORCE),--force) $(foreach p,$(PEERS),--peer $(p))

MODELS ?= unet attention_unet multires_unet unet3plus swin_unet efficient_unet deeplabv3plus unet_seed
zoo: install $(if $(filter $(SYNTH),$(RAW)),synth) ## Each model of MODELS through the same patient folds and budget (cv/zoo_NAME), then one table: FOLD="0 1" TRAIN_CONFIG= EPOCHS= TTA=0|1
	$(foreach m,$(MODELS),$(TNBC) cv --raw $(RAW) --out cv/zoo_$(m) --folds $(or $(FOLDS),4) --train-config $(TRAIN_CONFIG) \
		--model $(m) $(foreach f,$(or $(FOLD),0 1),--fold $(f)) $(if $(EPOCHS),--epochs $(EPOCHS)) $(POST_FLAGS) $(TUNE_FLAGS) $(if $(FORCE),--force) &&) true
	$(BIN)/python -m benchmarks.zoo_table $(foreach m,$(MODELS),cv/zoo_$(m))

study: install $(if $(filter $(SYNTH),$(RAW)),synth) ## Augmentation study on RAW into STUDY_OUT: FOLDS= FOLD="0 1" ELASTIC="110:8 400:10" TRAIN_CONFIG= EPOCHS= SEED= FORCE=1
	$(TNBC) study --raw $(RAW) --out $(STUDY_OUT) --folds $(or $(FOLDS),4) --train-config $(TRAIN_CONFIG) \
		$(foreach f,$(FOLD),--fold $(f)) $(foreach e,$(ELASTIC),--elastic $(e)) \
		$(if $(CONFIG),--dataset-config $(CONFIG)) $(if $(EPOCHS),--epochs $(EPOCHS)) $(if $(SEED),--seed $(SEED)) \
		$(POST_FLAGS) $(TUNE_FLAGS) $(if $(FORCE),--force)

# pytest-xdist processes: a serial run keeps one of the 2 CI cores idle most of the time (628 s -> 420 s)
TEST_WORKERS ?= 2

test: install ## Run the test suite in TEST_WORKERS processes (TEST_WORKERS=0: serial, in this process)
	$(BIN)/python -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS))

BENCH_RAW = $(if $(filter $(SYNTH),$(RAW)),,--raw $(RAW))

bench: bench-dataset bench-input bench-train bench-train-options bench-infer bench-slide ## All benchmarks (speed goals; prints ratios against the old methods); RAW= for the real release

bench-dataset: install ## Dataset build vs the old generator's method, 1 and all workers, regeneration
	$(BIN)/python benchmarks/bench_dataset.py $(BENCH_RAW)

bench-train: install ## Training images/s + peak RSS, tf.data vs numpy arrays, unet and the old TNBC model; 1x/4x data
	$(BIN)/python benchmarks/bench_train.py $(BENCH_RAW)

bench-zoo: install ## Training images/s + peak RSS of every zoo model on this machine, one run (float32 as the zoo's CV; issue 14)
	$(BIN)/python benchmarks/bench_zoo_cpu.py $(BENCH_RAW)

bench-train-options: install ## Training images/s of unet per precision x batch (and op determinism) vs the old way, one run
	$(BIN)/python benchmarks/bench_train_options.py $(BENCH_RAW)

bench-infer: install ## Whole vs tiled inference MP/s on 2048x2048; metric time vs a naive per-nucleus implementation
	$(BIN)/python benchmarks/bench_infer.py $(BENCH_RAW)

bench-slide: install ## Whole-slide inference MP/s and peak RSS on a 1x and a 4x larger pyramidal TIFF (memory flat)
	$(BIN)/python benchmarks/bench_slide.py

bench-input: install ## tf.data pipeline vs load-everything numpy and vs the default model's training rate; RSS at 1x/4x data
	$(BIN)/python benchmarks/bench_input.py $(BENCH_RAW)

clean: ## Remove generated outputs (dataset/TNBC, raw/synthetic/); keeps raw/ downloads, runs/ and .venv
	rm -rf -- dataset/TNBC dataset/.TNBC.* $(SYNTH)
