// Renders the reference chat transcripts that tests/test_chat.c compares chat.c against.
//
// The renderer is the npm package @huggingface/jinja (the transformers.js implementation of
// the Jinja subset that Hugging Face chat templates use); the templates are the models' own
// (../shared/fixtures/templates/ plus a few older families copied into tests/data/), so no
// expected string here was written by the project.
//
//   cd tests/ref && npm install && node render_templates.mjs            # rewrites the file
//   node tests/ref/render_templates.mjs --check                          # compares, exit 1 on diff
//
// Output: tests/data/chat_expected.txt, a length-prefixed record file that C reads without a
// JSON parser (format below, in writeRecords).
//
// Known difference from Python Jinja (transformers, llama.cpp's minja): @huggingface/jinja's
// str.strip/lstrip/rstrip ignore their argument and strip all whitespace, where Python's
// strip('\n') strips only newlines. The conversations below keep spaces away from the places
// Qwen3's template strips newlines, so both engines render them the same.
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { Template } from "@huggingface/jinja";

const here = dirname(fileURLToPath(import.meta.url));
const repo = join(here, "..", "..");
const fixtures = process.env.MOERUN_FIXTURES || join(repo, "..", "shared", "fixtures");

const DS_BOS = "<｜begin▁of▁sentence｜>";
const DS_EOS = "<｜end▁of▁sentence｜>";

// id, expected family, template source ("fixtures:" = under the shared fixtures), bos, eos
// (the token texts of the models' tokenizer_config.json).
const TEMPLATES = [
  ["deepseek-v3", "deepseek3", "fixtures:templates/deepseek-ai-DeepSeek-V3.jinja", DS_BOS, DS_EOS],
  ["deepseek-v3.1", "deepseek3.1", "fixtures:templates/deepseek-ai-DeepSeek-V3.1.jinja", DS_BOS, DS_EOS],
  ["r1-distill-qwen", "deepseek-r1", "fixtures:templates/deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja", DS_BOS, DS_EOS],
  ["r1-distill-llama", "deepseek-r1", "fixtures:templates/deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja", DS_BOS, DS_EOS],
  ["llamacpp-r1", "deepseek-r1-llamacpp", "fixtures:templates/llama-cpp-deepseek-r1.jinja", DS_BOS, DS_EOS],
  ["qwen2.5", "qwen2.5", "fixtures:templates/Qwen-Qwen2.5-7B-Instruct.jinja", "", "<|im_end|>"],
  ["qwen3", "qwen3", "fixtures:templates/Qwen-Qwen3-0.6B.jinja", "", "<|im_end|>"],
  ["llama3.1", "llama3.1", "fixtures:templates/meta-llama-Llama-3.1-8B-Instruct.jinja", "<|begin_of_text|>", "<|eot_id|>"],
  ["mistral-nemo", "mistral-nemo", "fixtures:templates/mistralai-Mistral-Nemo-Instruct-2407.jinja", "<s>", "</s>"],
  // Older families, templates copied verbatim into tests/data from the models'
  // tokenizer_config.json: deepseek-ai/DeepSeek-V2-Lite-Chat (also llama.cpp's
  // tests/test-chat-template.cpp "DeepSeek-V2"), teknium/OpenHermes-2.5-Mistral-7B (ChatML, as
  // in llama.cpp's test), meta-llama/Meta-Llama-3-8B-Instruct, meta-llama/Llama-2-7b-chat-hf,
  // mistralai/Mistral-7B-Instruct-v0.2 (as in llama.cpp's test).
  ["deepseek-v2", "deepseek2", "tests/data/chat_template_deepseek2.txt", DS_BOS, DS_EOS],
  ["chatml", "chatml", "tests/data/chat_template_chatml.txt", "<s>", "<|im_end|>"],
  ["llama3", "llama3", "tests/data/chat_template_llama3.txt", "<|begin_of_text|>", "<|eot_id|>"],
  ["llama2", "llama2", "tests/data/chat_template_llama2.txt", "<s>", "</s>"],
  ["mistral", "mistral", "tests/data/chat_template_mistral.txt", "<s>", "</s>"],
];

// Templates whose output depends on enable_thinking get an extra case with it off.
const THINK_SWITCH = new Set(["deepseek-v3.1", "r1-distill-qwen", "qwen3"]);

const SYS = { role: "system", content: "You are a helpful assistant. Answer briefly." };
const U1 = { role: "user", content: "Hello! Who are you?" };
// Edge spaces: Llama's trim filters and Llama-2's strip() must remove them, others keep them.
const A1 = { role: "assistant", content: "  I am an assistant, héllo ✓.  " };
// Template-looking text in content stays literal: content is data to the template too.
const U2 = { role: "user", content: "What is {{ 2 + 2 }}? Use <b>tags</b> if you like." };
// R1-style reasoning: R1 templates drop it from history, Qwen3 keeps it after the last query.
const A2 = { role: "assistant", content: "<think>\nThe user asks for 2 + 2.\nThat is 4.\n</think>\n\n2 + 2 = 4." };
const U3 = { role: "user", content: "Thanks. And 3 + 3?" };
const A3 = { role: "assistant", content: "<think>\nSimple: 6.\n</think>\n\n3 + 3 = 6." };
const SYS2 = { role: "system", content: "Be terse." };
// Two closing tags: R1 keeps what follows the last, V3.1 what follows the first, Qwen3 splits
// the reasoning at the first and the answer at the last.
const A4 = { role: "assistant", content: "<think>\nfirst\n</think>\n\nmiddle</think>\n\nlast" };

// name, messages, add_generation_prompt, enable_thinking
const CASES = [
  ["sys3", [SYS, U1, A1, U2, A2, U3], true, true],
  ["sys3_nogen", [SYS, U1, A1, U2, A2, U3], false, true],
  ["nosys", [U1, A1, U2, A2, U3], true, true],
  ["single", [U1], true, true],
  // Ends on an assistant turn (a prefilled reply): where the reasoning and the system
  // prompt go differ most between families here.
  ["final_asst", [SYS, U1, A1, U3, A3], false, true],
  ["final_asst_gen", [SYS, U1, A3], true, true],
  ["two_sys", [SYS, U1, A1, SYS2, U3], true, true],
  ["two_close", [SYS, U1, A4, U3], true, true],
  ["two_close_final", [SYS, U1, A4], false, true],
  // Two assistant turns in a row after the last query: Qwen3 keeps both reasonings, V3.1
  // opens the second without <｜Assistant｜> and adds no generation prompt.
  ["asst_asst", [SYS, U1, A2, A3], true, true],
  ["nothink", [SYS, U1, A1, U2, A2, U3], true, false],
];

function readTemplate(src) {
  const path = src.startsWith("fixtures:") ? join(fixtures, src.slice(9)) : join(repo, src);
  return readFileSync(path, "utf8");
}

function render(tmpl, msgs, gen, think, bos, eos) {
  try {
    const out = tmpl.render({
      messages: msgs,
      bos_token: bos,
      eos_token: eos,
      add_generation_prompt: gen,
      // llama.cpp always passes enable_thinking (default true); so do we.
      enable_thinking: think,
    });
    return { out };
  } catch (e) {
    return { error: String(e.message || e).split("\n")[0] };
  }
}

// Format: "template ID FAMILY SOURCE\n" lines, then per case
//   "case ID CASE gen=G think=T\n" "bos N\n<N bytes>\n" "eos N\n<N bytes>\n"
//   ("msg ROLE N\n<N bytes>\n")* then "expect N\n<N bytes>\n" or "expect error MESSAGE\n"
// N counts UTF-8 bytes. Lines starting with '#' are comments.
function writeRecords() {
  const parts = [
    "# Reference chat renderings: written by tests/ref/render_templates.mjs with @huggingface/jinja.\n",
    "# Do not edit; rerun the script. Format described in the script.\n",
  ];
  const blob = (tag, s) => `${tag} ${Buffer.byteLength(s, "utf8")}\n${s}\n`;
  for (const [id, fam, src] of TEMPLATES) parts.push(`template ${id} ${fam} ${src}\n`);
  for (const [id, , src, bos, eos] of TEMPLATES) {
    const tmpl = new Template(readTemplate(src));
    for (const [name, msgs, gen, think] of CASES) {
      if (name === "nothink" && !THINK_SWITCH.has(id)) continue;
      parts.push(`case ${id} ${name} gen=${gen ? 1 : 0} think=${think ? 1 : 0}\n`);
      parts.push(blob("bos", bos), blob("eos", eos));
      for (const m of msgs) parts.push(blob(`msg ${m.role}`, m.content));
      const r = render(tmpl, msgs, gen, think, bos, eos);
      parts.push(r.error !== undefined ? `expect error ${r.error}\n` : blob("expect", r.out));
    }
  }
  return parts.join("");
}

const outPath = join(repo, "tests", "data", "chat_expected.txt");
const text = writeRecords();
if (process.argv.includes("--check")) {
  const old = readFileSync(outPath, "utf8");
  if (old !== text) {
    console.error(`render_templates: ${outPath} differs from a fresh rendering`);
    process.exit(1);
  }
  console.log("render_templates: tests/data/chat_expected.txt matches a fresh rendering");
} else {
  writeFileSync(outPath, text);
  console.log(`render_templates: wrote ${outPath}`);
}
