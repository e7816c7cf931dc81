// grammY's file storage adapter, alone or under grammY's session() middleware, driven by
// bench/run.py with the same key sequences as the Python peers.
//
// Reads a JSON spec on stdin:
//   { mode: "adapter" | "session", root, sessions, populate, chatBase, timeCap,
//     workloads: ["W1", ...], changes: {W1: true, W2: false, W3: true},
//     sequences: [ {W1: [chat index, ...], ...}, ... one object per run ] }
// and prints one JSON result on stdout:
//   { sessions, populate: {seconds, sessions, bulk} | absent, runs: {W1: [{ops, seconds}]},
//     rss_kb, versions, notes }
//
// mode "adapter": per update `read` (initial if missing), change, `write` (W2: read only).
// mode "session": `bot.handleUpdate(update)` through `session({initial, storage})` and a
// handler that changes (or only reads) ctx.session. `botInfo` is preset and an API
// transformer answers every call in-process, so no request leaves the process.

import { readFileSync } from "node:fs";
import { performance } from "node:perf_hooks";
import { Bot, session } from "grammy";
import { FileAdapter } from "@grammyjs/storage-file";

const initial = () => ({ count: 0, lang: "en", step: "start", tags: ["a", "b"] });

function makeUpdate(updateId, chatId) {
  return {
    update_id: updateId,
    message: {
      message_id: updateId,
      date: 1700000000,
      chat: { id: chatId, type: "private", first_name: "U" },
      from: { id: chatId, is_bot: false, first_name: "U" },
      text: "hi",
    },
  };
}

function versions() {
  const version = (name) => {
    try {
      return JSON.parse(readFileSync(new URL(`./node_modules/${name}/package.json`, import.meta.url), "utf8")).version;
    } catch {
      return null;
    }
  };
  return { node: process.versions.node, grammy: version("grammy"), "@grammyjs/storage-file": version("@grammyjs/storage-file") };
}

function adapterDriver(storage, spec) {
  return async (_updateId, index, change) => {
    const key = String(spec.chatBase + index);
    let value = await storage.read(key);
    if (value === undefined) value = initial();
    if (change) {
      value.count += 1;
      await storage.write(key, value);
    } else if (value.count < 0) {
      throw new Error("impossible count");
    }
  };
}

function sessionDriver(storage, spec) {
  const bot = new Bot("123456:bench", {
    botInfo: {
      id: 1,
      is_bot: true,
      first_name: "Bench",
      username: "bench_bot",
      can_join_groups: true,
      can_read_all_group_messages: false,
      supports_inline_queries: false,
    },
  });
  let apiCalls = 0;
  bot.api.config.use(async () => {
    apiCalls += 1;
    return { ok: true, result: true };
  });
  let change = true;
  bot.use(session({ initial, storage }));
  bot.on("message", (ctx) => {
    if (change) ctx.session.count += 1;
    else if (ctx.session.count < 0) throw new Error("impossible count");
  });
  const run = async (updateId, index, changeIt) => {
    change = changeIt;
    await bot.handleUpdate(makeUpdate(updateId, spec.chatBase + index));
  };
  run.apiCalls = () => apiCalls;
  return run;
}

// Linux's VmHWM: getrusage's maxRSS of a child starts at its parent's RSS (it survives exec).
function peakRssKb() {
  try {
    const line = readFileSync("/proc/self/status", "ascii").split("\n").find((l) => l.startsWith("VmHWM:"));
    if (line) return Number(line.split(/\s+/)[1]);
  } catch {
    // not Linux
  }
  return process.resourceUsage().maxRSS;
}

async function main() {
  const spec = JSON.parse(readFileSync(0, "utf8"));
  const storage = new FileAdapter({ dirName: spec.root });
  const result = { sessions: spec.sessions, runs: {}, versions: versions(), notes: [] };
  for (const workload of spec.workloads) result.runs[workload] = [];

  if (spec.populate) {
    const start = performance.now();
    for (let i = 0; i < spec.sessions; i++) await storage.write(String(spec.chatBase + i), initial());
    result.populate = { seconds: (performance.now() - start) / 1000, sessions: spec.sessions, bulk: false };
  }

  const update = spec.mode === "session" ? sessionDriver(storage, spec) : adapterDriver(storage, spec);
  let updateId = 0;
  for (const sequences of spec.sequences) {
    for (const workload of spec.workloads) {
      const indexes = sequences[workload];
      const change = spec.changes[workload];
      const start = performance.now();
      const deadline = start + spec.timeCap * 1000;
      let done = 0;
      for (const index of indexes) {
        done += 1;
        await update(updateId + done, index, change);
        if (performance.now() > deadline) break;
      }
      result.runs[workload].push({ ops: done, seconds: (performance.now() - start) / 1000 });
      updateId += indexes.length;
    }
  }
  result.rss_kb = peakRssKb();
  if (update.apiCalls) result.notes.push(`Bot API calls answered in-process: ${update.apiCalls()}`);
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

await main();
