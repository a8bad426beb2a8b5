// A folder or a .zip picked in the browser, as the gzip'd tarball POST /v1/sources takes (ustar,
// no library).
import { zipEntries } from "./zip.js";

const enc = new TextEncoder();

function octal(value, width) {
  return value.toString(8).padStart(width - 1, "0") + "\0";
}

function header(path, size, mtime) {
  const block = new Uint8Array(512);
  const put = (text, at) => block.set(enc.encode(text), at);
  let name = path, prefix = "";
  if (enc.encode(name).length > 100) {
    const cut = path.lastIndexOf("/", 155);
    prefix = path.slice(0, cut);
    name = path.slice(cut + 1);
  }
  put(name, 0);
  put(octal(0o644, 8), 100);
  put(octal(0, 8), 108);
  put(octal(0, 8), 116);
  put(octal(size, 12), 124);
  put(octal(mtime, 12), 136);
  put("        ", 148);
  put("0", 156);
  put("ustar\x0000", 257);
  put(prefix, 345);
  let sum = 0;
  for (const byte of block) sum += byte;
  put(octal(sum, 7) + " ", 148);
  return block;
}

// `entries`: {path, data, mtime} each, as one gzip'd tarball.
async function pack(entries) {
  const parts = [];
  for (const { path, data, mtime } of entries) {
    parts.push(header(path, data.length, mtime), data);
    const pad = (512 - (data.length % 512)) % 512;
    if (pad) parts.push(new Uint8Array(pad));
  }
  parts.push(new Uint8Array(1024));
  const tar = new Blob(parts);
  return new Response(tar.stream().pipeThrough(new CompressionStream("gzip"))).blob();
}

// `files`: a FileList from <input webkitdirectory>; paths are made relative to the picked folder.
export async function folderTarball(files) {
  const entries = [];
  for (const file of files) {
    const path = (file.webkitRelativePath || file.name).split("/").slice(1).join("/") || file.name;
    entries.push({ path, data: new Uint8Array(await file.arrayBuffer()), mtime: Math.floor(file.lastModified / 1000) });
  }
  return pack(entries);
}

// An uploaded archive as the api takes it: a .zip is unpacked and packed as a tarball; a
// .tar.gz goes as it is.
export async function archiveTarball(file) {
  return /\.zip$/i.test(file.name) ? pack(await zipEntries(file)) : file;
}
