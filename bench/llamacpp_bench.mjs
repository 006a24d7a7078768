// llama.cpp's prefill and decode speed through the npm package node-llama-cpp (prebuilt CPU
// build), measured the way `moerun bench` measures moerun: ppN is one batch of N random token
// ids at positions 0..N-1 with the last token's logits (and a greedy pick from them), tgN is N
// single-token evaluations at positions 0..N-1, each with its logits and a greedy pick. One
// warm-up of each, then REPS timed runs; the sequence is cleared before every run.
// Prints one JSON line per test: {"test", "n_prompt", "n_gen", "n_threads", "avg_ts",
// "stddev_ts", "samples_ts", "wall_avg_ts", "wall_stddev_ts"}. avg_ts comes from llama.cpp's
// own timer (llama_perf_context: the time inside llama_decode, as llama-bench times it);
// wall_avg_ts from the clock around the node-llama-cpp calls, which adds the addon's
// per-call overhead (a libuv round trip for the decode and one for the greedy pick).
//
//   [LLAMA_GPU=vulkan] node bench/llamacpp_bench.mjs MODEL.gguf [THREADS=2] [N_PROMPT=128]
//                                                    [N_GEN=32] [REPS=3]
//
// Settings: context N_PROMPT + N_GEN (llama.cpp rounds it up to 256), batch N_PROMPT (the
// prompt in one batch, as moerun's), mmap on (the default), flash attention off (llama-bench's
// default), threads exactly THREADS for both batch and single-token work. node-llama-cpp has
// no option for ggml's thread polling: llama.cpp runs with its default (hybrid polling, poll 50).
import {createRequire} from "node:module";
import path from "node:path";
import {fileURLToPath} from "node:url";

// node-llama-cpp lives in tests/ref/node_modules (next to the other llama.cpp references).
const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, "..", "tests", "ref", "package.json"));
const {getLlama} = await import(require.resolve("node-llama-cpp"));

const [modelPath, threadsArg, promptArg, genArg, repsArg] = process.argv.slice(2);
if (!modelPath) {
    console.error("usage: node bench/llamacpp_bench.mjs MODEL.gguf [THREADS] [N_PROMPT] [N_GEN] [REPS]");
    process.exit(2);
}
const threads = Number(threadsArg ?? 2);
const nPrompt = Number(promptArg ?? 128);
const nGen = Number(genArg ?? 32);
const reps = Number(repsArg ?? 3);

// llama_perf_context_print's figures, updated by printTimings() through the logger.
const perf = {p_ms: 0, p_n: 0, e_ms: 0, e_n: 0, prints: 0};
function onLog(level, message) {
    const p = /prompt eval time =\s*([\d.]+) ms \/\s*(\d+) tokens/.exec(message);
    const e = /[^t] eval time =\s*([\d.]+) ms \/\s*(\d+) runs/.exec(message);
    if (p) perf.p_ms = Number(p[1]), perf.p_n = Number(p[2]);
    if (e) perf.e_ms = Number(e[1]), perf.e_n = Number(e[2]), perf.prints++;
    if (!p && !e && (level === "error" || level === "fatal")) console.error(message);
}
async function readPerf() {
    const seen = perf.prints;
    await context.printTimings();
    // the log lines arrive asynchronously: wait for the "eval time" one (it follows "prompt")
    for (let i = 0; i < 500 && perf.prints === seen; i++)
        await new Promise((resolve) => setTimeout(resolve, 2));
    if (perf.prints === seen) throw new Error("no llama_perf_context_print output");
    return {...perf};
}

// LLAMA_GPU=vulkan: llama.cpp's Vulkan build (@node-llama-cpp/linux-x64-vulkan), every layer
// on the GPU; unset: the CPU build.
const gpu = process.env.LLAMA_GPU || false;
const llama = await getLlama({gpu, logLevel: "info", logger: onLog, maxThreads: threads,
                              ...(gpu ? {build: "never"} : {})});
console.error(`llama.cpp backend: ${llama.gpu || "cpu"}`);
const model = await llama.loadModel({modelPath, ...(gpu ? {gpuLayers: "max"} : {})});
const context = await model.createContext({
    contextSize: Math.max(16, nPrompt + nGen),
    batchSize: Math.max(1, nPrompt),
    threads: {ideal: threads, min: threads},
    flashAttention: false,
    performanceTracking: true,
});
const sequence = context.getSequence();
const nVocab = model.tokens.vocabSize ?? model.fileInsights?.tokens?.vocabSize;
const greedy = {generateNext: {token: true, options: {temperature: 0}}};

let seed = 12345;
function randomTokens(n) {
    const out = [];
    for (let i = 0; i < n; i++) {
        seed = (seed * 1103515245 + 12345) % 2147483648;
        out.push(seed % nVocab);
    }
    return out;
}

async function prefill(n) {
    const ids = randomTokens(n);
    await sequence.clearHistory();
    const input = ids.map((id, i) => (i === n - 1 ? [id, greedy] : id));
    const t0 = process.hrtime.bigint();
    await sequence.controlledEvaluate(input);
    return Number(process.hrtime.bigint() - t0) / 1e9;
}

async function decode(n) {
    const ids = randomTokens(n);
    await sequence.clearHistory();
    const t0 = process.hrtime.bigint();
    for (const id of ids) await sequence.controlledEvaluate([[id, greedy]]);
    return Number(process.hrtime.bigint() - t0) / 1e9;
}

function meanSd(ts) {
    const avg = ts.reduce((a, b) => a + b, 0) / ts.length;
    const sd = ts.length > 1
        ? Math.sqrt(ts.reduce((a, b) => a + (b - avg) ** 2, 0) / (ts.length - 1)) : 0;
    return [avg, sd];
}

function report(test, n, llamaSecs, wallSecs) {
    const ts = llamaSecs.map((s) => n / s);
    const [avg, sd] = meanSd(ts);
    const [wallAvg, wallSd] = meanSd(wallSecs.map((s) => n / s));
    console.log(JSON.stringify({
        test, n_prompt: test === "pp" ? n : 0, n_gen: test === "tg" ? n : 0,
        n_threads: context.currentThreads, avg_ts: avg, stddev_ts: sd, samples_ts: ts,
        wall_avg_ts: wallAvg, wall_stddev_ts: wallSd,
    }));
}

// Seconds llama.cpp spent in llama_decode since the previous readPerf(): the addon's
// printTimings() resets llama.cpp's counters after printing them.
function decodeSecs(test, p) {
    return (test === "pp" ? p.p_ms : p.e_ms) / 1e3;
}

for (const [test, n, fn, warm] of [["pp", nPrompt, prefill, nPrompt], ["tg", nGen, decode, 4]]) {
    if (n <= 0) continue;
    await fn(Math.min(warm, n));
    const llamaSecs = [], wallSecs = [];
    for (let r = 0; r < reps; r++) {
        await readPerf(); // resets the counters
        wallSecs.push(await fn(n));
        llamaSecs.push(decodeSecs(test, await readPerf()));
    }
    report(test, n, llamaSecs, wallSecs);
}
await context.dispose();
await model.dispose();
