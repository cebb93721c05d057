"""Every message a check can fail with, in Chinese and in English: the one home of these texts.

`say(key, **fields)` fills in both, Chinese first. A student who reads one language sets
`LABKIT_LANG=zh` or `LABKIT_LANG=en`; the notebooks' own prose keeps both. The chat box's
labels live here too, so that one setting changes all that labkit says.
"""
from __future__ import annotations

import os
import string

LANGUAGES = ("zh", "en")

TEXTS: dict[str, tuple[str, str]] = {
    # ------------------------------------------------ 01: sizes, parameters, tokens
    "int.return": (
        "{call} 返回了 {kind}：请返回 int。",
        "{call} returned {kind}: return an int"),
    "weight_bytes.value": (
        "weight_bytes({n:,}, {dtype!r}) 返回了 {got:,}：{dtype} 每个权重占 {per:g} 字节。",
        "weight_bytes({n:,}, {dtype!r}) returned {got:,}: {dtype} stores each weight in {per:g} bytes"),
    "param_count.off": (
        "qwen3_param_count 在 {changed} 的配置上差了 {off:,}：检查共享（tied）的 lm_head、K/V 头数，以及每层的四个归一化权重。",
        "qwen3_param_count is off by {off:,} for a config with {changed}: check the tied lm_head, the K/V heads "
        "and the four norms per layer"),
    "count_tokens.value": (
        "count_tokens(tokenizer, {text!r}) 返回了 {got}，分词器切出 {expected} 个 token（不含特殊 token："
        "add_special_tokens=False）。",
        "count_tokens(tokenizer, {text!r}) returned {got}, the tokenizer makes {expected} tokens "
        "(without special tokens: add_special_tokens=False)"),
    # ------------------------------------------------ 02: wrapper, shapes, patch, export
    "wrapper.not_tensor": (
        "forward 必须返回张量（tensor），而不是 {kind}。",
        "forward must return a tensor, not {kind}"),
    "wrapper.shape": (
        "logits 的形状是 {shape}，应为 {expected}。",
        "logits have shape {shape}, expected {expected}"),
    "wrapper.mask": (
        "在左侧填充（left padding）的批次上，logits 与模型自己的不同：请把 attention_mask 传给模型。",
        "the logits differ from the model's own on a left-padded batch: pass attention_mask to the model"),
    "shapes.not_tuple": (
        "make_dynamic_shapes() 返回了 {kind}：请返回 tuple，每个输入一个 dict。",
        "make_dynamic_shapes() returned a {kind}: return a tuple with one dict per input"),
    "shapes.count": (
        "有 {n} 项：forward 的每个输入（input_ids、attention_mask）各一个 dict。",
        "{n} entries: one dict per input of forward (input_ids, attention_mask)"),
    "shapes.axes": (
        "请为每个输入声明第 0 维（批大小 batch）和第 1 维（序列长度 sequence）。",
        "declare axes 0 (batch) and 1 (sequence) of each input"),
    "shapes.dim": (
        "每个动态维度都需要一个 torch.export.Dim。",
        "each axis needs a torch.export.Dim"),
    "shapes.shared": (
        "两个输入必须共用同一组 Dim 对象（同一个 batch，同一个 sequence）。",
        "both inputs must share the same Dim objects (the same batch and the same sequence)"),
    "export.failed": (
        "用你的 export_model、Wrapper 和 make_dynamic_shapes() 导出失败（见第一个检查的信息）。",
        "the export with your export_model, Wrapper and make_dynamic_shapes() failed (see the first check)"),
    "export.not_regular": (
        "{file} 不是普通文件。",
        "{file} is not a regular file"),
    "export.missing": (
        "没有写出 {name}。",
        "no {name} was written"),
    "export.data_beside": (
        "计算图的权重必须放在它旁边的 {name}.data 里。",
        "the graph's weights must sit beside it, in {name}.data"),
    "patch.still_fails": (
        "在你的补丁里，vmap 路径上的 TorchScript 导出仍然失败：{error}",
        "the TorchScript export on the vmap path still fails inside your patch: {error}"),
    "patch.off_the_path": (
        "导出的计算图里没有 vmap 掩码路径加入的索引掩码（kv >= 0）：导出没有走这条路径。请不要改动 mask_patch，只写你的补丁。",
        "the exported graph lacks the index mask (kv >= 0) the vmap mask path adds: the export did not take that "
        "path. Leave mask_patch as it is and write the patch."),
    "patch.logits": (
        "在你的补丁里导出的计算图算出的 logits 与模型不同：请把所有参数原样传给原来的掩码函数。",
        "the graph exported inside your patch does not compute the model's logits: pass every argument "
        "through to the original mask function"),
    "patch.not_replaced": (
        "在 with 块内，AttentionMaskInterface._global_mapping['sdpa'] 仍是原函数：请把你的替换函数放进去。",
        "inside the with block, AttentionMaskInterface._global_mapping['sdpa'] is still the original function: "
        "put your replacement there"),
    "patch.not_restored": (
        "with 块结束后，原来的掩码函数没有恢复：退出时请把它放回去。",
        "after the with block the original mask function is not back: restore it on exit"),
    "patch.error_swallowed": (
        "with 块内抛出的异常没有传到调用者：不要吞掉异常。",
        "an error raised inside the with block did not reach the caller: do not swallow it"),
    "patch.not_restored_after_error": (
        "with 块抛出异常之后，原来的掩码函数没有恢复：请在 finally 中恢复。",
        "after a with block that raised, the original mask function is not back: restore it in a finally clause"),
    # ------------------------------------------------ the exported graph
    "graph.input_names": (
        "计算图的输入是 {names}，应当恰好是 {expected}，顺序也一致：检查 input_names 和包装器 forward 的参数。",
        "graph inputs are {names}, expected exactly {expected} in that order: check input_names and the "
        "wrapper's forward signature"),
    "graph.input_dtypes": (
        "输入必须是 {dtype}（token id 和掩码）；实际是 {wrong}。",
        "inputs must be {dtype} (token ids and masks); got {wrong}"),
    "graph.fixed_dim": (
        "输入 {name} 的第 {axis} 维固定为 {dim!r}：计算图只能接受这一种形状。请在 dynamic_shapes 中为这一维给出 "
        "torch.export.Dim。",
        "input {name} has a fixed size {dim!r} on axis {axis}: the graph would only accept that one shape. "
        "Give this axis a torch.export.Dim in dynamic_shapes."),
    "graph.logits_only": (
        "输出是 {names}，应当只有 ['logits']：forward 请返回 logits 张量，而不是模型的输出对象。",
        "outputs are {names}, expected only ['logits']: return the logits tensor from forward, not the model's "
        "output object"),
    "graph.logits_dtype": (
        "logits 是 {dtype}，应为 float32。",
        "logits are {dtype}, expected float32"),
    "graph.logits_shape": (
        "logits 的形状是 {shape}，应为 [batch, sequence, {vocab}]。",
        "logits have shape {shape}, expected [batch, sequence, {vocab}]"),
    "graph.size": (
        "磁盘上的 {mb:,.0f} MB 是 {params:,} 个参数 FP32 大小（{expected_mb:,.0f} MB）的 {ratio:.2f} 倍；"
        "大于 1 说明有权重存了两份（共享的词嵌入？），约 0.5 说明权重是 FP16。",
        "{mb:,.0f} MB on disk is {ratio:.2f}x the FP32 size of {params:,} parameters ({expected_mb:,.0f} MB); "
        "above 1 suggests a weight stored twice (the tied embedding?), about 0.5 suggests FP16 weights"),
    "graph.one_data_file": (
        "计算图的权重在 {files} 中，应当是它旁边的一个文件 {expected!r}：保存时用 external_data=True。",
        "the graph's weights are in {files}, expected one file {expected!r} beside it: save with "
        "external_data=True"),
    "parity.logits": (
        "ONNX 与 PyTorch 的 logits 最多相差 {diff:.2e}（上限 {limit:g}）：计算图算的不是同一个函数"
        "（掩码错了？传给模型的输入错了？）。",
        "ONNX and PyTorch logits differ by up to {diff:.2e} (limit {limit:g}): the graph does not compute the "
        "same function (wrong mask? wrong inputs passed to the model?)"),
    "parity.greedy": (
        "第 {i} 个提示：贪心解码的 token 在第 {first} 位分叉（{a} 对 {b}）。",
        "prompt {i}: greedy tokens diverge at position {first} ({a} vs {b})"),
    # ------------------------------------------------ 03: reader, recipe, quantize call, INT8 graph
    "reader.count": (
        "{n} 个提示在 None 之前给出了 {got} 个输入：每个提示一个，按顺序，最后返回 None。",
        "{n} prompts gave {got} feeds before None: one feed per prompt, in order, then None"),
    "reader.count_visible": (
        "三个提示应给出三个输入，然后返回 None。",
        "three prompts, three feeds, then None"),
    "reader.empty": (
        "校准读取器什么也没给出；它必须给出含有 {wanted} 的 dict。",
        "the calibration reader yielded nothing; it must yield dicts with {wanted}"),
    "reader.names": (
        "读取器给出的是 {got}，计算图需要 {wanted}。",
        "the reader yields {got}, the graph expects {wanted}"),
    "reader.dtypes": (
        "数据类型不对：{wrong}；计算图需要 {wanted}。",
        "wrong dtypes {wrong}; the graph expects {wanted}"),
    "reader.feed_keys": (
        "每个输入是一个 dict，恰好包含 input_ids 和 attention_mask。",
        "each feed is a dict with exactly input_ids and attention_mask"),
    "reader.dtype": (
        "{name} 必须是 int64 的 numpy 数组，实际是 {got}。",
        "{name} must be an int64 numpy array, got {got}"),
    "reader.shape": (
        "对 {prompt!r}：{name} 的形状是 {shape}，应为 {expected}（[1, token 数]，最多 MAX_TOKENS={max_tokens}）。",
        "for {prompt!r}: {name} has shape {shape}, expected {expected} ([1, tokens], at most "
        "MAX_TOKENS={max_tokens})"),
    "reader.shape_visible": (
        "input_ids 和 attention_mask 都必须是 [1, token 数]。",
        "input_ids and attention_mask must both be [1, tokens]"),
    "reader.values": (
        "对 {prompt!r}：{name} 与对话模板的渲染结果不同（apply_chat_template 且 add_generation_prompt=True，"
        "然后最多取 MAX_TOKENS 个 token）。",
        "for {prompt!r}: {name} differs from the chat-template rendering (apply_chat_template with "
        "add_generation_prompt=True, then at most MAX_TOKENS tokens)"),
    "recipe.type": (
        "my_recipe 必须是 quantize.Recipe。",
        "my_recipe must be a quantize.Recipe"),
    "recipe.fields": (
        "my_recipe 有 Recipe 没有的字段：{extra}",
        "my_recipe has fields a Recipe does not: {extra}"),
    "recipe.string": (
        "my_recipe.{key} 必须是字符串。",
        "my_recipe.{key} must be a string"),
    "recipe.unreadable": (
        "无法读取 my_recipe（见第一个量化检查的信息）。",
        "my_recipe could not be read (see the first quantization check)"),
    "quant.no_ops": (
        "{name} 里没有量化算子：量化真的在这个文件上运行了吗？",
        "{name} has no quantized operators: did quantization run on this file?"),
    "quant.float_weights": (
        "文件中只有 {share:.0%} 是 int8 权重：大部分权重仍是浮点。",
        "only {share:.0%} of the file is int8 weights: most weights were left in float"),
    "quant.static_share": (
        "{linears} 个解码层线性层中只有 {quantized} 个（{share:.0%}）读取 int8 激活；静态 INT8 至少需要 "
        "{at_least:.0%}。其余的只有权重是 int8：只让敏感度扫描指出的层保持浮点。",
        "only {quantized} of {linears} decoder linears ({share:.0%}) read int8 activations; static INT8 needs at "
        "least {at_least:.0%}. The rest have int8 weights only: keep float only the layers the scan points at."),
    "quant.not_qdq": (
        "没有对权重的 DequantizeLinear：请用 quant_format=QuantFormat.QDQ。",
        "no DequantizeLinear of a weight: use quant_format=QuantFormat.QDQ"),
    "quant.activations": (
        "激活被量化为 {found}：x86 的 int8 内核要求 activation_type=QuantType.QUInt8。",
        "activations are quantized to {found}: x86's int8 kernels take activation_type=QuantType.QUInt8"),
    "quant.weights": (
        "权重是 {found}，这台 CPU 需要 {wanted}（quantize.default_weight_type() 为 {weight_type!r}）："
        "请相应设置 weight_type。",
        "weights are {found}, this CPU wants {wanted} (quantize.default_weight_type() is {weight_type!r}): "
        "set weight_type accordingly"),
    "quant.per_tensor": (
        "权重每个张量只有一个 scale：请设 per_channel=True（逐通道）。",
        "weights have one scale per tensor: set per_channel=True"),
    "quant.call_static": (
        "{total} 个解码层线性层中有 {quantized} 个读取 int8 激活；除 keep_float 中的 {keep} 个以外都应如此。",
        "{quantized} of {total} decoder linears read int8 activations; all but the {keep} in keep_float should"),
    "quant.call_error": (
        "你的计算图的 logits 与浮点平均相差 {error:.4f}，labkit 的调用是 {ours:.4f}：用上 ranges_file 里的"
        "量化范围了吗？",
        "your graph's logits are {error:.4f} from float on average, labkit's call gives {ours:.4f}: are the "
        "ranges from ranges_file used?"),
    "quant.size_ratio": (
        "INT8 文件是 FP32 的 {ratio:.1%}；最多应为 {at_most:.0%}。词嵌入（和 lm_head）量化了吗？只存了一份吗？",
        "the INT8 file is {ratio:.1%} of FP32; it should be at most {at_most:.0%}. Is the embedding (and "
        "lm_head) quantized and stored once?"),
    "quant.follows_fp32": (
        "量化模型预测出 FP32 下一个 token 的比例只有 {low}（至少需要 {at_least:.0%}）。哪些层在 INT8 下损失最大？"
        "看敏感度扫描。",
        "the quantized model predicts FP32's next token for only {low} (at least {at_least:.0%} needed). Which "
        "layers lose the most to INT8? See the sensitivity scan."),
    "quant.first_tokens": (
        "量化模型的贪心回答在 {same} 个 token 后偏离了 FP32；前 {first} 个必须相同。哪些层在 INT8 下损失最大？"
        "看敏感度扫描。",
        "the quantized model's greedy answer leaves FP32's after {same} tokens; the first {first} must match. "
        "Which layers lose the most to INT8? See the sensitivity scan."),
    # ------------------------------------------------ 04/05: generate loops
    "loop.not_ints": (
        "请返回 Python int 的列表（对 numpy 值用 int(...)）；实际是 {kind}。",
        "return a list of Python ints (use int(...) on numpy values); got {kind}"),
    "loop.diverges": (
        "在 {prompt!r} 上，你的 token 在参考的 {total} 个中的第 {first} 位偏离：\n"
        "  你的：  {yours!r}（{n} 个 token）\n  参考：  {reference!r}\n"
        "取的是最后一个位置 logits 的 argmax 吗？是在结束 token 之前（而不是之后）停下的吗？",
        "on {prompt!r} your tokens leave the reference at position {first} of {total}:\n"
        "  yours:     {yours!r} ({n} tokens)\n  reference: {reference!r}\n"
        "Argmax of the last position's logits? Stopping before (not after) an end-of-turn token?"),
    "loop.end_of_turn": (
        "模型先说了 {said!r}，然后是回合结束 token {end!r}；你的循环返回了 {got!r}。stop_ids 里的 token 一出现"
        "就停止，且不要把它加进结果。",
        "the model said {said!r} then its end-of-turn token {end!r}; your loop returned {got!r}. Stop as soon "
        "as a token in stop_ids comes out, without adding it."),
    "kv.inputs": (
        "输入是 {got}...，应为 {expected}...（共 {n} 个）：input_ids、attention_mask、position_ids，"
        "然后每层的 past_key_values.{{i}}.key/.value。",
        "inputs are {got}..., expected {expected}... ({n} in all): input_ids, attention_mask, position_ids, "
        "then past_key_values.{{i}}.key/.value per layer"),
    "kv.outputs": (
        "输出是 {got}...，应为 logits，然后每层的 present.{{i}}.key/.value。",
        "outputs are {got}..., expected logits then present.{{i}}.key/.value per layer"),
    "kv.io_type": (
        "{name} 是秩为 {rank} 的 {dtype}，应为秩为 {want_rank} 的 {want_dtype}。",
        "{name} is {dtype} of rank {rank}, expected {want_dtype} of rank {want_rank}"),
    "kv.fixed_dim": (
        "{name} 的第 {axis} 维固定为 {dim}；批大小和序列长度必须是符号维度（dynamic_shapes 中有名字的 Dim）。",
        "{name} has a fixed size {dim} on axis {axis}; batch and sequence lengths must be symbolic (a named dim "
        "in dynamic_shapes)"),
    "kv.prefill": (
        "经你的计算图做一次预填充，logits 与模型的最多相差 {diff:.2e}（上限 {limit:g}）：请把 input_ids、"
        "attention_mask、position_ids 以及由 past 构造的缓存传给模型。",
        "a prefill through your graph gives logits up to {diff:.2e} from the model's (limit {limit:g}): pass "
        "input_ids, attention_mask, position_ids and the cache built from past to the model"),
    "kv.cache_names": (
        "{call} 的开头是 {got}，应为 {expected}（共 {n} 个：每层一个 key 和一个 value，逐层排列）。",
        "{call} starts {got}, expected {expected} ({n} in all: a key and a value per layer, layer by layer)"),
    "kv.slower": (
        "你的带缓存循环只比每步重算整个序列快 {speedup:.2f} 倍（至少要 {needed:.0f} 倍）：解码步是否只输入新 token，"
        "并带上一步返回的 past？",
        "your cached loop is only {speedup:.2f}x as fast as recomputing the whole sequence every step (at least "
        "{needed:.0f}x is expected): is the decode step feeding only the new token, with the past from the previous "
        "call?"),
    "kv.speed_raised": (
        "在 256 个 token 的提示上，cached_generate 抛出了 {error}",
        "cached_generate on a 256-token prompt raised {error}"),
    # ------------------------------------------------ 05: the chart's table
    "summary.type": (
        "summary 必须是 pandas DataFrame，而不是 {kind}。",
        "summary must be a pandas DataFrame, not {kind}"),
    "summary.columns": (
        "列是 {got}，应为 {expected}。",
        "columns are {got}, expected {expected}"),
    "summary.rows": (
        "有 {n} 行；bench 有 {bench} 行：bench 的每行对应一行。",
        "{n} rows; bench has {bench}: one row per bench row"),
    "summary.order": (
        "各行必须是 bench 的配置，顺序与 bench 相同。",
        "the rows must be bench's configurations in bench's order"),
    "summary.compression": (
        "压缩比是 FP32 字节数除以该行的字节数（1 / bench['ratio']）。",
        "compression is FP32 bytes divided by the row's bytes (1 / bench['ratio'])"),
    "summary.tok_s": (
        "tok_s 必须取自 bench。",
        "tok_s must be bench's"),
    # ------------------------------------------------ the referee
    "referee.reference_called": (
        "你的代码调用了 {name}，它是 labkit 的参考答案，评分时不可用：请自己完成本任务。",
        "your code called {name}, one of labkit's reference answers, which are switched off while grading: "
        "write this task yourself."),
    "referee.raised": (
        "{what} 抛出了 {error}",
        "{what} raised {error}"),
    "referee.cell_failed": (
        "（重新运行你的单元格时，第 {cell} 个单元格出错：{error}）",
        "(when your cells were run again: cell {cell}: {error})"),
    "referee.check_failed": (
        "检查无法使用你的结果：{error}（你的函数返回了应有的类型吗？）",
        "the check could not use your result: {error} (does your function return what the task asks for?)"),
    "referee.timeout": (
        "你的代码没有在时限内完成{limit}。",
        "your code did not finish in time{limit}"),
    "referee.process_ended": (
        "评分进程结束了（退出码 {code}{last}）。",
        "the grading process ended (exit code {code}{last})"),
    "referee.too_much": (
        "你的代码返回的数据超过了评分器能接受的大小。",
        "your code returned more data than the grader accepts"),
    "referee.garbled": (
        "评分进程的回复无法解读（你的代码向它的通道写了东西吗？）。",
        "the grading process's reply was garbled (did your code write to its channel?)"),
    "referee.unreadable_value": (
        "评分器无法读取这个值。",
        "a value the grader cannot read"),
    "lockdown.read": (
        "评分时不允许读取 labkit 的原始代码：{path}",
        "reading labkit's original code is not allowed while grading: {path}"),
    "lockdown.run": (
        "评分时不允许运行 labkit 的原始代码。",
        "running labkit's original code is not allowed while grading"),
    "lockdown.compile": (
        "评分时不允许编译 labkit 的原始代码。",
        "compiling labkit's original code is not allowed while grading"),
    # ------------------------------------------------ this CPU and INT8 (the README's quantization table)
    "env.int8_avx2": (
        "这台 CPU 有 AVX2，没有 VNNI/AMX：INT8 矩阵乘法走较慢的 u8×u8 内核，INT8 约为 FP32 的 1.3 倍速"
        "（有 VNNI 的 CPU 约 1.9 倍），回答也比 FP32 偏离得多一些。这不是你的错。",
        "This CPU has AVX2 but no VNNI or AMX: INT8 products run on a slower u8 x u8 kernel, so INT8 is about "
        "1.3x FP32 here (about 1.9x with VNNI) and its answers stray a little further from FP32's. Nothing you "
        "did wrong."),
    "env.int8_fast": (
        "这台 CPU 有整数点积指令（VNNI/AMX 或 Arm dotprod）：INT8 走快速内核。",
        "This CPU has integer dot-product instructions (VNNI/AMX, or Arm's): INT8 runs on the fast kernels."),
    # ------------------------------------------------ a cell that only shows something
    "demonstration.skipped": (
        "（演示「{what}」：nbgrader 自动评分时不运行，这一格不计分）",
        "({what}: not run under nbgrader autograde, where it grades nothing)"),
    # ------------------------------------------------ the chat box
    "chat.title": ("与 {label} 对话", "Chat with {label}"),
    "chat.you": ("你", "You"),
    "chat.notice": ("提示", "notice"),
    "chat.empty": ("和模型说点什么吧。", "Say something to the model."),
    "chat.placeholder": ("输入消息", "Message"),
    "chat.send": ("发送", "Send"),
    "chat.stop": ("停止", "Stop"),
    "chat.clear": ("清空", "Clear"),
    "chat.save": ("保存对话", "Save transcript"),
    "chat.temperature": ("温度", "temperature"),
    "chat.max_tokens": ("最多 token 数", "max tokens"),
    "chat.guard": ("重复保护（不重复 4-gram）", "repetition guard (no repeated 4-grams)"),
    "chat.greedy": ("温度为 0 时是贪心解码", "greedy when temperature is 0"),
    "chat.busy": ("还在回答；请先按“停止”", "still answering; press Stop first"),
    "chat.answering": ("回答中……", "answering…"),
    "chat.speed": ("{tok_s:.1f} token/秒，首个 token 用时 {ttft_s:.2f} 秒",
                   "{tok_s:.1f} tokens/s, first token after {ttft_s:.2f} s"),
    "chat.cleared": ("已清空", "cleared"),
    "chat.graph": ("模型图", "graph"),
    "chat.switched": ("之后的回答来自 {label}。", "Replies from now on come from {label}."),
    "chat.graph_mine": ("INT8，你在 03 中量化的（不带缓存）", "INT8, yours from notebook 03 (no cache)"),
    "chat.graph_fp32": ("FP32，02 导出的（不带缓存）", "FP32, exported in notebook 02 (no cache)"),
    "chat.graph_fused": ("INT8 融合图（带 KV 缓存，聊天默认）", "INT8 fused graph (KV cache, the chat's default)"),
    "chat.saved": ("已保存到 {path}", "saved to {path}"),
    "chat.stopped": ("（已停止）", "(stopped)"),
    "chat.terminal_help": ("Ctrl-C 停止当前回答；/clear 清空，/save [文件] 保存，/quit 退出。",
                           "Ctrl-C stops a reply; /clear, /save [file], /quit."),
    "chat.cannot_use": ("无法使用 {graph}：{error}", "cannot use {graph}: {error}"),
    "chat.type_first": ("请先输入一条消息", "type a message first"),
    "chat.no_model": ("没有加载模型；请用 use(path) 给对话一个计算图", "no model loaded; give the chat a graph with use(path)"),
    "chat.too_long": (
        "你的消息有 {tokens} 个 token；再加上回答的 {reply} 个 token，超出了 {context} 个 token 的上下文。请缩短消息。",
        "your message is {tokens} tokens; with {reply} tokens for the reply it does not fit the context of "
        "{context} tokens. Shorten it."),
    "chat.failed": ("生成失败：{error}", "generation failed: {error}"),
    "chat.looping": (
        "回复在原地打转，已停止。请换个说法再问，或调高温度。",
        "the reply was going round in circles, so it was stopped. Ask again in other words, or raise the "
        "temperature."),
    "chat.transcript_about": (
        "模型：{model}；计算图：{graph}；采样：{sampling}；系统提示：{system}；保存于 {when}",
        "model: {model}; graph: {graph}; sampling: {sampling}; system prompt: {system}; saved {when}"),
    "chat.system": ("系统提示", "system prompt"),
    "chat.template_system": ("（模型模板的默认）", "(the model template's default)"),
}

# Words a refusal carries in either language: the integrity report finds refused cells by them.
REFUSAL_MARKS = ("评分时不允许", "not allowed while grading")


def language() -> str:
    """'zh', 'en', or 'both' (the default) from LABKIT_LANG."""
    chosen = os.environ.get("LABKIT_LANG", "").strip().lower()
    return chosen if chosen in LANGUAGES else "both"


def say(key: str, sep: str = "\n", **fields) -> str:
    """The message `key` with `fields` filled in: Chinese, `sep`, English (or one of them)."""
    zh, en = (text.format(**fields) for text in TEXTS[key])
    return {"zh": zh, "en": en}.get(language(), f"{zh}{sep}{en}")


def label(key: str, **fields) -> str:
    """A short text of the chat box: both languages on one line unless LABKIT_LANG picks one."""
    return say(key, sep=" ", **fields)


def fields_of(text: str) -> set[str]:
    """The names a template fills in."""
    return {name.split(".")[0].split("[")[0] for _, name, _, _ in string.Formatter().parse(text) if name}
