# The loop behind `make flywheel`: Studio traces -> tasks -> rollouts -> samples -> a trained
# model -> evaluation (held-out split and EVAL set), one file per step under runs/$(RUN)/, so a
# re-run redoes only what changed. Every setting is a variable (`make help` lists them):
#   make flywheel DB=studio.sqlite AGENT=MyAgent MODEL=/models/Qwen3-8B WORKFLOW=my_agent.py:run
# Steps that need an LLM run inside a *phase*, one per model. By default (SERVE=once) one vLLM
# serves the whole loop: it starts with the first model a phase needs, and each trained model's
# weights go into it (`python -m tracewheel.vllm CKPT --load-into URL`) before its phase; with
# SERVE=phase each phase starts a vLLM of its own. Either way the steps of a phase run under
# `python -m tracewheel.vllm ... --exec make GOALS ENDPOINT=...`, so no server outlives them. A
# step made on its own (make runs/demo/iter-0/eval.jsonl) serves its model.

RUN ?= demo## name of the run: its files go under runs/$(RUN)/
DB ?= examples/demo.sqlite## the Studio database to learn from (read only)
REFERENCES ?= examples/demo-references.jsonl## known-good answers (JSONL, by id or query); empty: none
AGENT ?= MathAgent## only this agent's turns; empty: every agent
RUBRICS ?= examples/rubrics.txt## trace-filter's rubrics; empty: the judge's base criteria only
FILTER_ARGS ?= --drop-errors --dedup --require-reference --check-reference --undecided drop --no-judge## trace-filter's filters: the answers kept agree with their references (no judge: the embedded model cannot grade, and the references decide)
PARAPHRASES ?= 8## training tasks reworded once each by task-augment (0: none)
HELDOUT ?= 0.1## share of the tasks held out for evaluation (the EVAL set is the larger check)
MODEL ?= smollm2-135m## the starting model: a registered name or a model directory
WORKFLOW ?= examples/math_agent.py:run## the agent: FILE.py:FN or MODULE:FN
REWARD ?= boxed## rollout's --reward: boxed (1 right, 0 else), judge, or FILE.py:FN
ITERS ?= 1## training iterations
PER_TASK ?= 1## rollouts per training task, a group (rollout --per-task; ALGO=grpo needs 2 or more; rejection sampling keeps the right ones of 1, and the loop's hour has room for one)
TOP_UP ?= 0## rollout --top-up: a training task whose PER_TASK rollouts all got the same reward gets up to this many more, until one differs (dynamic sampling, for ALGO=grpo)
EVAL_PER_TASK ?= 1## rollouts per held-out task
EVAL ?= examples/gsm8k-eval.jsonl examples/math-eval.jsonl## labelled tasks (id, query, reference; one file or several) every model is scored on, checked disjoint from training, reported by their metadata.source; empty: the held-out split only
EVAL_SET_PER_TASK ?= 1## rollouts per task of the EVAL set
EVAL_TEMPERATURE ?= 0## sampling temperature of every evaluation (0: greedy, the agent as it would be deployed); training rollouts sample at 1
TEST_SET ?= 300## problems of GSM8K's test split that make gsm8k-test scores the first and the last model on, after the loop (0: all 1,319); reported only, never trained on
MAX_TOKENS ?= 128## tokens one LLM call may generate (a trained demo agent's longest call: 126)
JOBS ?= 16## rollouts in flight at once
MAX_MODEL_LEN ?= 4096## context length vLLM serves
MERGE_ARGS ?=## extra ctx-merge options, e.g. --on-mismatch splice
WARMUP ?= sft## iteration 1 learns the kept production traces by SFT; empty: it too is $(ALGO)
WARMUP_ARGS ?= --lr 5e-5 --epochs 1## train options of the warm-up
TRAIN_MAX_LEN ?= 2048## ctx-merge --max-len of the production traces the warm-up learns
ALGO ?= sft## train's --algo on rollouts: sft (with --min-reward: rejection sampling) or grpo
TRAIN_ARGS ?= --min-reward 1 --lr 1e-5 --allow-empty## train options on rollouts: learn the right ones only (bench/sweep_train.py compares settings)
SEED ?= 0## the seed of sampling, the split and training
SERVE ?= once## once: one vLLM for the loop, each new model's weights loaded into it; phase: a vLLM per model
ASYNC ?= 0## 1: each model trains while the server goes on with the model before (its evaluations, and rollouts up to MAX_LAG versions behind); needs SERVE=once
MAX_LAG ?= 1## with ASYNC=1: how many versions older than the model it trains a rollout may be (train --max-lag drops older ones)
POLICIES ?=## multi-agent: AGENT=POLICY,...: one LoRA adapter per policy on MODEL, trained on its agents' calls and served together (examples/README.md)
DEFAULT_POLICY ?=## with POLICIES: the policy of agents outside the map (MODEL's name: the frozen base); empty: their calls fail
LORA_RANK ?= 8## with POLICIES: the adapters' rank

# The old names of the three above, SAMPLES, EVAL_SAMPLES and EVAL_SET_SAMPLES, still accepted
# for a while; the new name wins where both are given.
$(foreach v,PER_TASK EVAL_PER_TASK EVAL_SET_PER_TASK,$(eval _old := $(subst PER_TASK,SAMPLES,$v))\
  $(if $(value $(_old)),$(if $(filter 0,$(MAKELEVEL)),$(warning $(_old) is now called $v))$(if $(filter command line,$(origin $v)),,$(eval $v := $(value $(_old))))))
undefine _old

ifeq ($(ALGO)$(PER_TASK),grpo1)
$(error ALGO=grpo needs PER_TASK=2 or more: GRPO learns from differences within a task's group, and a group of one has none)
endif

RUNS ?= runs## where runs go
R := $(RUNS)/$(RUN)
ITER_NUMS := $(shell seq 1 $(ITERS))
TRACEWHEEL_BIN := $(VENV)/bin
# The workflow's and the reward's files, when they are files: editing them re-runs the rollouts.
AGENT_FILES := $(wildcard $(firstword $(subst :, ,$(WORKFLOW))) $(firstword $(subst :, ,$(REWARD))))
prev = $(shell echo $$(($1 - 1)))
# The iterations' files, as static pattern rules: make chains an implicit (%) rule only once, so
# iteration 2's rollouts could not be planned before iteration 1's exist (`make -n`).
each = $(foreach i,$2,$(R)/iter-$i/$1.jsonl)
model_of = $(if $(filter 0,$1),$(MODEL),$(R)/iter-$1/ckpt)
warmup = $(and $(WARMUP),$(filter 1,$1))
# Iterations that learn from rollouts (all but a warm-up).
ROLLOUT_ITERS := $(filter-out $(if $(WARMUP),1),$(ITER_NUMS))
ifeq ($(ASYNC),1)
ifneq ($(SERVE),once)
$(error ASYNC=1 needs SERVE=once: training overlaps the server's work, and the loop's one server versions the weights)
endif
LAG := $(MAX_LAG)
else
LAG := 0
endif
ifneq ($(POLICIES),)
ifneq ($(SERVE)$(ASYNC)$(WARMUP),once0)
$(error POLICIES needs SERVE=once, ASYNC=0 and WARMUP= (no warm-up: start from a model that knows the task))
endif
endif
comma := ,
# The policies' names, and each policy's flags for rollout and train.
POLICY_NAMES := $(sort $(foreach e,$(subst $(comma), ,$(POLICIES)),$(word 2,$(subst =, ,$(e)))))
policy_args = $(if $(POLICIES),--policy $(POLICIES) $(if $(DEFAULT_POLICY),--default-policy $(DEFAULT_POLICY)))
# The model whose rollouts iteration N learns from: N-1, or with ASYNC=1 up to LAG older; never
# the model before a warm-up (it has not learned the task yet: its rollouts teach little).
FIRST_SOURCE := $(if $(WARMUP),1,0)
source_sh = s=$$(($1 - 1 - $(LAG))); if [ $$s -lt $(FIRST_SOURCE) ]; then s=$(FIRST_SOURCE); fi
source = $(shell $(call source_sh,$1); echo $$s)
# What model N is made of: with POLICIES, MODEL and iter-N/adapters/ (iter-0: new adapters that
# change nothing).
trained = $(if $(filter 0,$1),$(if $(POLICIES),$(R)/iter-0/adapters/policies.json),$(R)/iter-$1/metrics.jsonl)
# Inside a phase ENDPOINT is the phase's vLLM (TRACEWHEEL_MODEL names its model); outside, a step
# serves its own model, and trace-filter / task-augment use the embedded one.
engine = $(if $(ENDPOINT),--base-url $(ENDPOINT) --model "$$TRACEWHEEL_MODEL",--serve $(call model_of,$1))
helper = $(if $(ENDPOINT),--base-url $(ENDPOINT) --model "$$TRACEWHEEL_MODEL")
# Each step's stderr goes to the terminal and to logs/STEP.log, where the report finds it.
log = 2> >(tee $(R)/logs/$1.log >&2)
# The agent on the tasks in $< into $@: $1 rollouts per task by model $2, logged as $3, seeded
# $4 (default SEED), with $5 more options. Every model gets the same sampling seed per task, so
# evaluations pair draw for draw.
rollouts = $(TRACEWHEEL_BIN)/rollout -w $(WORKFLOW) -n $1 -j $(JOBS) --reward $(REWARD) \
  --max-tokens $(MAX_TOKENS) --seed $(or $4,$(SEED)) $(call engine,$2) $(policy_args) $5 $< \
  -o $@ $(call log,$3)
# The same, as an evaluation: sampled at EVAL_TEMPERATURE.
evaluate = $(call rollouts,$1,$2,$3,,--temperature $(EVAL_TEMPERATURE))
# The evaluations of model $1.
evaluations = $(R)/iter-$1/eval.jsonl $(if $(EVAL),$(R)/iter-$1/eval-set.jsonl)

.SECONDARY:  # keep every step's file: they are the run's record, and what makes re-runs cheap
.SECONDEXPANSION:

$(R)/logs:
	mkdir -p $@

$(R)/tasks.exported.jsonl: $(DB) $(REFERENCES) | $(R)/logs
	$(TRACEWHEEL_BIN)/trace-export $(DB) --status ok $(if $(AGENT),--agent $(AGENT)) \
	  $(if $(REFERENCES),--references $(REFERENCES)) -o $@ $(call log,export)

$(R)/tasks.kept.jsonl: $(R)/tasks.exported.jsonl $(RUBRICS)
	$(TRACEWHEEL_BIN)/trace-filter $(FILTER_ARGS) $(if $(RUBRICS),--rubrics $(RUBRICS)) \
	  $(helper) $< -o $@ $(call log,filter)

# Held-out tasks are chosen among the kept ones before augmenting, so no paraphrase of a
# held-out task can reach training.
$(R)/tasks.train.jsonl $(R)/heldout.jsonl &: $(R)/tasks.kept.jsonl
	$(TRACEWHEEL_BIN)/python -m tracewheel.split --held-out $(R)/heldout.jsonl \
	  --fraction $(HELDOUT) --seed $(SEED) $< -o $(R)/tasks.train.jsonl $(call log,split)

$(R)/tasks.augmented.jsonl: $(R)/tasks.train.jsonl
ifeq ($(PARAPHRASES),0)
	: > $@
else
	head -n $(PARAPHRASES) $< | $(TRACEWHEEL_BIN)/task-augment paraphrase -n 1 --seed $(SEED) \
	  --history $(R)/augment-history.sqlite $(helper) -o $@ $(call log,augment)
endif

$(R)/train.jsonl: $(R)/tasks.train.jsonl $(R)/tasks.augmented.jsonl
	cat $^ > $@.tmp && mv $@.tmp $@

# Iteration N: rollouts of model N-1 on the training tasks, merged into samples, trained into
# iter-N/ckpt; iter-N/eval.jsonl is model N on the held-out tasks (iter-0: the starting model).
# The warm-up (iteration 1) learns the kept production traces themselves, the seed's recipe:
# their answers passed the filter and the judge, and came from the agent in production.
ifneq ($(WARMUP),)
$(R)/iter-1/samples.jsonl: $(R)/tasks.train.jsonl
	@mkdir -p $(@D)
	$(TRACEWHEEL_BIN)/ctx-merge --tokenizer $(MODEL) --max-len $(TRAIN_MAX_LEN) $(MERGE_ARGS) \
	  $< -o $@ $(call log,merge-1)
endif

# With ASYNC=1 one model may sample two iterations' rollouts: each its own draws (SEED + N).
$(call each,rollouts,$(ROLLOUT_ITERS)): $(R)/iter-%/rollouts.jsonl: $(R)/train.jsonl $(AGENT_FILES) $$(call trained,$$(call source,$$*))
	@mkdir -p $(@D)
	$(call rollouts,$(PER_TASK),$(call source,$*),rollout-$*,$(if $(filter-out 0,$(LAG)),$(shell echo $$(($(SEED) + $*)))),$(if $(filter-out 0,$(TOP_UP)),--top-up $(TOP_UP)))

$(call each,samples,$(ROLLOUT_ITERS)): $(R)/iter-%/samples.jsonl: $(R)/iter-%/rollouts.jsonl
	$(TRACEWHEEL_BIN)/ctx-merge $(MERGE_ARGS) $< -o $@ $(call log,merge-$*)

ifeq ($(POLICIES),)
$(call each,metrics,$(ITER_NUMS)): $(R)/iter-%/metrics.jsonl: $(R)/iter-%/samples.jsonl
	rm -rf $(@D)/ckpt
	$(TRACEWHEEL_BIN)/train --model $(call model_of,$(call prev,$*)) \
	  $(if $(call warmup,$*),--algo $(WARMUP) $(WARMUP_ARGS),--algo $(ALGO) $(TRAIN_ARGS) \
	    $(if $(filter-out 0,$(LAG)),--policy-version $(call prev,$*) --max-lag $(LAG))) \
	  --seed $(SEED) --out $(@D)/ckpt $< -o $@ $(call log,train-$*)
else
# Multi-agent: each policy's adapter goes on from the one before, on its own agents' samples.
$(call each,metrics,$(ITER_NUMS)): $(R)/iter-%/metrics.jsonl: $(R)/iter-%/samples.jsonl $$(call trained,$$(call prev,$$*))
	rm -rf $(@D)/adapters
	$(TRACEWHEEL_BIN)/train --model $(MODEL) $(policy_args) --lora-r $(LORA_RANK) \
	  --init-adapters $(R)/iter-$(call prev,$*)/adapters --algo $(ALGO) $(TRAIN_ARGS) \
	  --seed $(SEED) --out $(@D)/adapters $< -o $@ $(call log,train-$*)

$(R)/iter-0/adapters/policies.json:
	@mkdir -p $(R)/logs
	$(TRACEWHEEL_BIN)/train --model $(MODEL) $(policy_args) --lora-r $(LORA_RANK) --allow-empty \
	  --out $(@D) /dev/null $(call log,train-0)
endif

$(call each,eval,0 $(ITER_NUMS)): $(R)/iter-%/eval.jsonl: $(R)/heldout.jsonl $(AGENT_FILES) $$(call trained,$$*)
	@mkdir -p $(@D)
	$(call evaluate,$(EVAL_PER_TASK),$*,eval-$*)

# The EVAL set (its files one after another), refused where any task of it is a training task
# or paraphrase (id or query), or an id comes twice.
$(R)/eval-tasks.jsonl: $(EVAL) $(R)/train.jsonl
	$(TRACEWHEEL_BIN)/python -m tracewheel.evalset --train $(R)/train.jsonl $(EVAL) -o $@ \
	  $(call log,evalset)

# Model N on the EVAL set.
$(call each,eval-set,0 $(ITER_NUMS)): $(R)/iter-%/eval-set.jsonl: $(R)/eval-tasks.jsonl $(AGENT_FILES) $$(call trained,$$*)
	@mkdir -p $(@D)
	$(call evaluate,$(EVAL_SET_PER_TASK),$*,eval-set-$*)

# GSM8K's test split, for reporting only: a fixed sample (TEST_SET), the first and the last
# model on it after the loop (make gsm8k-test), each served by a vLLM of its own. Checked
# disjoint from training like the EVAL set.
$(R)/test-tasks.jsonl: examples/gsm8k.py $(R)/train.jsonl
	$(TRACEWHEEL_BIN)/python examples/gsm8k.py --test -n $(TEST_SET) --seed 0 \
	  | $(TRACEWHEEL_BIN)/python -m tracewheel.evalset --train $(R)/train.jsonl -o $@ \
	  $(call log,test-tasks)

$(call each,test-set,0 $(ITER_NUMS)): $(R)/iter-%/test-set.jsonl: $(R)/test-tasks.jsonl $(AGENT_FILES) $$(call trained,$$*)
	@mkdir -p $(@D)
	$(call evaluate,1,$*,test-set-$*)

gsm8k-test-loop:
	@$(MAKE) --no-print-directory $(R)/iter-0/test-set.jsonl $(R)/iter-$(ITERS)/test-set.jsonl
	$(TRACEWHEEL_BIN)/python -m tracewheel.report $(R) > /dev/null
	@echo "gsm8k-test: the report is $(R)/report.md (its Test set section)"

$(R)/report.md: $(foreach i,0 $(ITER_NUMS),$(call evaluations,$i))
	$(TRACEWHEEL_BIN)/python -m tracewheel.report $(R) > /dev/null

# One phase per model: model 0 serves the filter, the paraphrases, its evaluation and the first
# rollouts (none before a warm-up); model K its evaluation and the next rollouts. A phase
# already done serves nothing. These recipes call $(MAKE), so make runs them even under
# `make -n`: then they print each phase's server and the steps they would run, and start nothing.
DRY_RUN := $(findstring n,$(firstword -$(MAKEFLAGS)))
# Shell: the goals of phase $$k, model $$k's: in $$first what the next training needs (its
# rollouts, and before iteration 1 the training tasks), in $$rest the rest (its evaluations,
# rollouts of later iterations); all of them in $$goals; its model in $$model.
phase = first=; rest="$(call evaluations,$$k)"; \
  if [ $$k -eq 0 ]; then first="$(R)/train.jsonl"; fi; \
  for j in $(ROLLOUT_ITERS); do $(call source_sh,$$j); if [ $$s -eq $$k ]; then \
    if [ $$j -eq $$((k + 1)) ]; then first="$$first $(R)/iter-$$j/rollouts.jsonl"; \
    else rest="$$rest $(R)/iter-$$j/rollouts.jsonl"; fi; fi; done; \
  goals="$$first $$rest"; \
  if [ $$k -eq 0 ] || [ -n "$(POLICIES)" ]; then model="$(MODEL)"; else model="$(R)/iter-$$k/ckpt"; fi
pending = ! $(MAKE) -s -q $$goals >/dev/null 2>&1
vllm = $(TRACEWHEEL_BIN)/python -m tracewheel.vllm
FROM ?= 0
# How the loop's server takes new models: LoRA adapters (POLICIES), else whole weights, numbered.
server_updates = $(if $(POLICIES),--lora-rank $(LORA_RANK),--weight-updates --weight-version $$k)
# Shell: model $$k's adapters into the server at ENDPOINT, one per policy, each under its name.
load_adapters = $(MAKE) --no-print-directory $(call trained,0) && \
  for p in $(POLICY_NAMES); do \
    if [ -n "$(DRY_RUN)" ]; then echo "$(vllm) $(R)/iter-$$k/adapters/$$p --load-into $(ENDPOINT) --adapter $$p"; \
    else $(vllm) $(R)/iter-$$k/adapters/$$p --load-into "$(ENDPOINT)" --adapter $$p \
      2> >(tee -a $(R)/logs/load-$$k.log >&2) || exit 1; fi; done

flywheel-loop:
	@mkdir -p $(R)/logs
ifeq ($(SERVE),once)
	@start=; for k in 0 $(ITER_NUMS); do $(phase); \
	  if $(pending); then start=$$k; break; fi; done; \
	if [ -n "$$start" ]; then \
	  k=$$start; $(phase); \
	  if [ $$k -gt 0 ]; then $(MAKE) --no-print-directory $(R)/iter-$$k/metrics.jsonl ENDPOINT= || exit 1; fi; \
	  echo "== flywheel: one vLLM for the whole loop (SERVE=once), started with $$model"; \
	  if [ -n "$(DRY_RUN)" ]; then \
	    echo "$(vllm) $$model $(server_updates) --max-model-len $(MAX_MODEL_LEN)" \
	      "--log-file $(R)/logs/vllm.log --exec make flywheel-phases FROM=$$k ENDPOINT=<its base URL>"; \
	    $(MAKE) --no-print-directory flywheel-phases FROM=$$k ENDPOINT=http://127.0.0.1:PORT/v1; \
	  else \
	    $(vllm) "$$model" $(server_updates) --max-model-len $(MAX_MODEL_LEN) \
	      --log-file $(R)/logs/vllm.log --exec sh -c '$(MAKE) --no-print-directory flywheel-phases '"FROM=$$k"' ENDPOINT="$$OPENAI_BASE_URL"' || exit 1; \
	  fi; \
	fi
else
	@$(MAKE) --no-print-directory flywheel-phases
endif
	@$(MAKE) --no-print-directory $(R)/report.md
	@echo "flywheel: the report is $(R)/report.md (plots beside it)"

# Phases FROM..ITERS, each followed by the training it feeds. With ENDPOINT (SERVE=once) they
# share the server there, which serves model FROM: each later model's weights go into it first,
# under its number as version. With ASYNC=1 the training runs while the phase's other work does.
train_next = $(MAKE) --no-print-directory $(R)/iter-$$((k + 1))/metrics.jsonl ENDPOINT=
flywheel-phases:
	@served=$(if $(POLICIES),-1,$(FROM)); for k in $$(seq $(FROM) $(ITERS)); do $(phase); \
	  next=; if [ $$k -lt $(ITERS) ]; then next=$$((k + 1)); fi; \
	  if $(pending); then \
	    echo "== flywheel phase $$k: serving $$model"; \
	    if [ -n "$(ENDPOINT)" ]; then \
	      if [ $$served -ne $$k ] && [ -n "$(POLICIES)" ]; then \
	        $(load_adapters); served=$$k; \
	      elif [ $$served -ne $$k ]; then \
	        if [ -n "$(DRY_RUN)" ]; then echo "$(vllm) $$model --load-into $(ENDPOINT) --weight-version $$k"; \
	        else $(vllm) "$$model" --load-into "$(ENDPOINT)" --weight-version $$k \
	          2> >(tee -a $(R)/logs/load-$$k.log >&2) || exit 1; fi; \
	        served=$$k; \
	      fi; \
	      if [ "$(ASYNC)" = 1 ] && [ -n "$$next" ]; then \
	        if [ -n "$$first" ]; then $(MAKE) --no-print-directory $$first ENDPOINT="$(ENDPOINT)" || exit 1; fi; \
	        echo "== flywheel iteration $$next: training, while model $$k serves: $$rest"; \
	        $(train_next) & trainer=$$!; \
	        $(MAKE) --no-print-directory $$rest ENDPOINT="$(ENDPOINT)" || { kill $$trainer; exit 1; }; \
	        wait $$trainer || exit 1; \
	        continue; \
	      fi; \
	      $(MAKE) --no-print-directory $$goals ENDPOINT="$(ENDPOINT)" || exit 1; \
	    elif [ -n "$(DRY_RUN)" ]; then \
	      echo "$(vllm) $$model --max-model-len $(MAX_MODEL_LEN)" \
	        "--log-file $(R)/logs/vllm-$$k.log --exec make $$goals ENDPOINT=<its base URL>"; \
	      $(MAKE) --no-print-directory $$goals ENDPOINT=http://127.0.0.1:PORT/v1; \
	    else \
	      $(vllm) "$$model" --max-model-len $(MAX_MODEL_LEN) --log-file $(R)/logs/vllm-$$k.log \
	        --exec sh -c '$(MAKE) --no-print-directory '"$$goals"' ENDPOINT="$$OPENAI_BASE_URL"' \
	        || exit 1; \
	    fi; \
	  fi; \
	  if [ -n "$$next" ]; then \
	    echo "== flywheel iteration $$next: training"; \
	    $(train_next) || exit 1; \
	  fi; \
	done

# Online (`make online`, python -m tracewheel.online): the warm-up model (iteration 1) served with
# LoRA adapters on, the production gateway in front of it, simulated users asking through it, and
# candidates trained on their sessions, gated on GATE_SET and promoted when better.
ONLINE ?= $(R)/online## where make online writes: report.md, online.jsonl, sessions.jsonl, users.jsonl
ONLINE_MINUTES ?= 40## how long the simulated users ask
ONLINE_USERS ?= 8## simulated users asking at once
ONLINE_BATCH ?= 96## rewarded sessions a candidate is trained on (since the live model went live)
ONLINE_TASKS ?= 3000## problems the users draw from: the template family (examples/math_eval.py, seed 1), none of GATE_SET or EVAL
GATE_SET ?= $(ONLINE)/gate.jsonl## labelled tasks each candidate and the live model are scored on (greedy); made when missing: GATE_TASKS of the template family, seed 2
GATE_TASKS ?= 100## the made gate set's size: 100 cannot tell +0.07 from noise, 300 could, but a model scored 104 tasks in 5.3 minutes on 2 idle cores (300: about 15)
ONLINE_TEMPERATURE ?= 0.7## the deployed agent's sampling temperature for its users
ONLINE_TRAIN_ARGS ?= --algo sft --min-reward 1 --lr 5e-4 --epochs 2## train's options for each candidate (a LoRA adapter)
ONLINE_ARGS ?=## more python -m tracewheel.online options, e.g. --invert 2 (candidate 2 on inverted rewards)

online-loop: $(call trained,1)
	@if [ -e $(ONLINE)/online.jsonl ]; then echo "$(ONLINE) holds an online run already: remove it, or set ONLINE=" >&2; exit 1; fi
	@mkdir -p $(ONLINE)
	$(TRACEWHEEL_BIN)/python examples/math_eval.py -n $(ONLINE_TASKS) --seed 1 -o $(ONLINE)/tasks.jsonl
	@[ -e $(GATE_SET) ] || $(TRACEWHEEL_BIN)/python examples/math_eval.py -n $(GATE_TASKS) --seed 2 -o $(GATE_SET)
	$(vllm) $(R)/iter-1/ckpt --lora-rank $(LORA_RANK) --max-model-len $(MAX_MODEL_LEN) \
	  --log-file $(ONLINE)/vllm.log --exec $(TRACEWHEEL_BIN)/python -m tracewheel.online \
	  --base $(R)/iter-1/ckpt --gate-set $(GATE_SET) -w $(WORKFLOW) --out $(ONLINE) \
	  --batch $(ONLINE_BATCH) --lora-r $(LORA_RANK) --train-args "$(ONLINE_TRAIN_ARGS)" \
	  --max-tokens $(MAX_TOKENS) --duration $$(($(ONLINE_MINUTES) * 60)) --seed $(SEED) \
	  --traffic "$(TRACEWHEEL_BIN)/python examples/online_users.py $(ONLINE)/tasks.jsonl \
	    $(foreach f,$(GATE_SET) $(EVAL),--exclude $(f)) --users $(ONLINE_USERS) \
	    --temperature $(ONLINE_TEMPERATURE) --duration $$(($(ONLINE_MINUTES) * 60)) \
	    --seed $(SEED) -o $(ONLINE)/users.jsonl" $(ONLINE_ARGS)
