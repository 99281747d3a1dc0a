"""Runs inside vLLM's worker processes (vLLM's own environment: no tracewheel there), loaded with
``--worker-extension-cls tracewheel_vllm_worker.WeightUpdates`` by ``tracewheel.vllm`` when a
server takes new weights; its methods are reached through vLLM's ``/collective_rpc``."""

from __future__ import annotations


class WeightUpdates:
    """Mixed into vLLM's worker class."""

    def tracewheel_reload_weights(self, weights_path: str) -> None:
        """Load the checkpoint at ``weights_path`` in place; where that fails part way (a file
        cut short, a tensor missing), load the weights that served before it again, so the
        server never answers with a mix of two checkpoints, and raise saying which."""
        previous = getattr(self, "_tracewheel_weights", None) or \
            self.model_runner.model_config.model
        try:
            self._tracewheel_load(weights_path)
        except Exception as err:
            try:
                self._tracewheel_forget_failed_load()
                self._tracewheel_load(previous)
            except Exception as again:
                raise RuntimeError(
                    f"tracewheel: loading {weights_path} failed ({err}), and loading the "
                    f"previous weights {previous} again failed too ({again}): the weights are "
                    f"mixed") from err
            raise RuntimeError(f"tracewheel: loading {weights_path} failed ({err}); the "
                               f"previous weights {previous} are loaded again") from err
        self._tracewheel_weights = weights_path

    def _tracewheel_forget_failed_load(self) -> None:
        """vLLM reloads layer by layer: a layer waits, off its serving tensors, until all its
        weights arrived, and then they replace the serving ones. A load that fails part way
        leaves layers waiting with what arrived, and the next load would replay that (and
        fail the same way). Put every waiting layer back on its serving tensors and forget
        what it buffered. (vLLM 0.32's reload internals: pinned in the project's vLLM.)"""
        from vllm.model_executor.model_loader.reload import layerwise

        for layer in self.model_runner.get_model().modules():
            info = layerwise.LAYERWISE_INFO.get(layer)
            if info is None or not info.can_load():
                continue
            if info.kernel_tensors is not None:
                layerwise._place_kernel_tensors(layer, info)
            for tensor in layerwise.get_layer_tensors(layer).values():
                tensor.weight_loader = layerwise._get_original_loader(tensor)
            info.reset()
        layerwise.LOADING_LAYERS.clear()

    def _tracewheel_load(self, weights_path: str) -> None:
        """vLLM's in-place reload of a checkpoint's weights from disk, made whole on a CPU.

        On a CPU vLLM packs every linear layer's weight for its GEMM kernel once, at load. A
        reload packs again the layers it loads, but an output layer tied to the input
        embedding is not one of them (the checkpoint has no weight of its own for it): it
        would go on computing logits with the old embedding. Tie it again and pack it again.
        """
        self.reload_weights(weights_path=weights_path)
        model = self.model_runner.get_model()
        lm_head = getattr(model, "lm_head", None)
        config = self.model_runner.model_config.hf_config
        if lm_head is None or not hasattr(lm_head, "cpu_linear"):
            return  # not a CPU layer: its weight is read as it is at every call
        if getattr(config, "tie_word_embeddings", False):
            lm_head.weight = model.model.embed_tokens.weight
        from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

        dispatch_cpu_unquantized_gemm(lm_head, remove_weight=False)
