// llama.cpp (through the npm package node-llama-cpp, its prebuilt CPU build) as a peer:
// loads a GGUF file, feeds token ids, and prints for every position the next-token
// probabilities of the top tokens as one JSON line: [[id, p], ...].
// Usage: node llamacpp_probs.mjs MODEL.gguf 1,2,3 [top=20]
import {getLlama} from "node-llama-cpp";

const [modelPath, idList, topArg] = process.argv.slice(2);
const ids = idList.split(",").map(Number);
const top = Number(topArg ?? 20);
const llama = await getLlama({gpu: false, logLevel: "error"});
const model = await llama.loadModel({modelPath});
const context = await model.createContext({contextSize: Math.max(64, ids.length + 8), threads: 1});
const sequence = context.getSequence();
const input = ids.map((id) => [id, {generateNext: {probabilities: true}}]);
const out = await sequence.controlledEvaluate(input);
for (const item of out) {
    const probs = [...(item?.next?.probabilities ?? new Map()).entries()]
        .sort((a, b) => b[1] - a[1]).slice(0, top);
    console.log(JSON.stringify(probs));
}
await context.dispose();
await model.dispose();
