// A .zip picked in the browser, unpacked here with the browser's own inflate (DecompressionStream)
// and packed again as the gzip'd tarball POST /v1/sources takes: the api keeps one upload format,
// and its checks (paths, sizes, links) apply to a zip's files as to any upload.
const LOCAL = 0x04034b50, CENTRAL = 0x02014b50, END = 0x06054b50;

function dosTime(date, time) {
  const d = new Date(1980 + (date >> 9), ((date >> 5) & 15) - 1, date & 31, time >> 11, (time >> 5) & 63, (time & 31) * 2);
  return Math.floor(d.getTime() / 1000);
}

async function inflate(raw) {
  const stream = new Blob([raw]).stream().pipeThrough(new DecompressionStream("deflate-raw"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

// The files of the zip as {path, data, mtime}; a single top folder (as "Compress" makes) and
// macOS's __MACOSX/ companions are left out, so the paths start where the model's files do.
export async function zipEntries(file) {
  const buf = new Uint8Array(await file.arrayBuffer());
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  let end = -1;
  for (let i = buf.length - 22; i >= Math.max(0, buf.length - 22 - 65535); i--) {
    if (view.getUint32(i, true) === END) { end = i; break; }
  }
  if (end < 0) throw new Error(`${file.name} is not a zip file`);
  const count = view.getUint16(end + 10, true);
  let at = view.getUint32(end + 16, true);
  if (count === 0xffff || at === 0xffffffff) throw new Error(`${file.name}: ZIP64 archives are not supported`);
  const names = new TextDecoder();
  const entries = [];
  for (let n = 0; n < count; n++) {
    if (at + 46 > buf.length || view.getUint32(at, true) !== CENTRAL) throw new Error(`${file.name} is damaged`);
    const method = view.getUint16(at + 10, true);
    const mtime = dosTime(view.getUint16(at + 14, true), view.getUint16(at + 12, true));
    const size = view.getUint32(at + 20, true);
    const nameLength = view.getUint16(at + 28, true);
    const skip = nameLength + view.getUint16(at + 30, true) + view.getUint16(at + 32, true);
    const local = view.getUint32(at + 42, true);
    const path = names.decode(buf.subarray(at + 46, at + 46 + nameLength));
    at += 46 + skip;
    if (path.endsWith("/") || path.startsWith("__MACOSX/")) continue;
    if (view.getUint32(local, true) !== LOCAL) throw new Error(`${file.name} is damaged at ${path}`);
    const start = local + 30 + view.getUint16(local + 26, true) + view.getUint16(local + 28, true);
    const raw = buf.subarray(start, start + size);
    if (method === 0) entries.push({ path, data: raw, mtime });
    else if (method === 8) entries.push({ path, data: await inflate(raw), mtime });
    else throw new Error(`${path}: compression method ${method} is not supported (use deflate or none)`);
  }
  const tops = new Set(entries.map((e) => (e.path.includes("/") ? e.path.split("/")[0] : "")));
  if (tops.size === 1 && !tops.has("")) {
    for (const e of entries) e.path = e.path.split("/").slice(1).join("/");
  }
  return entries;
}
