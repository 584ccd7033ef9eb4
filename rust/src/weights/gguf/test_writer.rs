//! A GGUF writer for tests: files built byte by byte from the format's description,
//! independently of the reader, plus llama.cpp's Q/K permutation to feed the un-permutation.

use super::GgufFile;

/// Writes GGUF files byte by byte from the format's description, independently of the reader.
pub(crate) struct Builder {
    /// The version field written (3 unless a test changes it).
    pub(super) version: u32,
    /// Alignment of the data section and of each tensor's data.
    pub(super) alignment: usize,
    /// Metadata pairs in `kv`.
    pub(super) n_kv: u64,
    /// Encoded metadata pairs.
    pub(super) kv: Vec<u8>,
    /// Tensor infos in `infos`.
    pub(super) n_tensors: u64,
    /// Encoded tensor infos.
    pub(super) infos: Vec<u8>,
    /// The data section.
    pub(super) data: Vec<u8>,
}

/// Appends a GGUF string (u64 length, bytes).
pub(super) fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend((s.len() as u64).to_le_bytes());
    buf.extend(s.as_bytes());
}

/// Little-endian f32 bytes.
pub(super) fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

impl Builder {
    /// An empty version-3 file with the default alignment.
    pub(crate) fn new() -> Self {
        let (kv, infos, data) = (Vec::new(), Vec::new(), Vec::new());
        Builder {
            version: 3,
            alignment: 32,
            n_kv: 0,
            kv,
            n_tensors: 0,
            infos,
            data,
        }
    }

    /// A metadata pair with value type `ty` and its already-encoded value.
    pub(super) fn kv(mut self, key: &str, ty: u32, value: &[u8]) -> Self {
        put_str(&mut self.kv, key);
        self.kv.extend(ty.to_le_bytes());
        self.kv.extend(value);
        self.n_kv += 1;
        self
    }

    /// A string metadata pair.
    pub(crate) fn kv_str(self, key: &str, value: &str) -> Self {
        let mut v = Vec::new();
        put_str(&mut v, value);
        self.kv(key, 8, &v)
    }

    /// A u32 metadata pair.
    pub(super) fn kv_u32(self, key: &str, value: u32) -> Self {
        self.kv(key, 4, &value.to_le_bytes())
    }

    /// A tensor info with an explicit offset and no data.
    pub(super) fn info(mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> Self {
        put_str(&mut self.infos, name);
        self.infos.extend((dims.len() as u32).to_le_bytes());
        dims.iter().for_each(|d| self.infos.extend(d.to_le_bytes()));
        self.infos.extend(ty.to_le_bytes());
        self.infos.extend(offset.to_le_bytes());
        self.n_tensors += 1;
        self
    }

    /// A tensor with its data appended (aligned) to the data section.
    pub(crate) fn tensor(mut self, name: &str, dims: &[u64], ty: u32, bytes: &[u8]) -> Self {
        self.data
            .resize(self.data.len().next_multiple_of(self.alignment), 0);
        let offset = self.data.len() as u64;
        self.data.extend(bytes);
        self.info(name, dims, ty, offset)
    }

    /// The file's bytes.
    pub(crate) fn build(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(self.version.to_le_bytes());
        out.extend(self.n_tensors.to_le_bytes());
        out.extend(self.n_kv.to_le_bytes());
        out.extend(&self.kv);
        out.extend(&self.infos);
        out.resize(out.len().next_multiple_of(self.alignment), 0);
        out.extend(&self.data);
        out
    }
}

/// A small valid file touching every value type and a few tensor types.
pub(super) fn sample() -> Builder {
    let mut strings = 8u32.to_le_bytes().to_vec();
    strings.extend(2u64.to_le_bytes());
    put_str(&mut strings, "<s>");
    put_str(&mut strings, "héllo");
    let mut nested = 9u32.to_le_bytes().to_vec();
    nested.extend(1u64.to_le_bytes());
    nested.extend(5u32.to_le_bytes());
    nested.extend(2u64.to_le_bytes());
    nested.extend((-1i32).to_le_bytes());
    nested.extend(7i32.to_le_bytes());
    Builder::new()
        .kv_str("general.architecture", "qwen2")
        .kv_u32("qwen2.block_count", 1)
        .kv("f", 6, &0.5f32.to_le_bytes())
        .kv("b", 7, &[1])
        .kv("i8", 1, &[0xFF])
        .kv("u64", 10, &u64::MAX.to_le_bytes())
        .kv("f64", 12, &2.5f64.to_le_bytes())
        .kv("tokens", 9, &strings)
        .kv("nested", 9, &nested)
        .tensor(
            "token_embd.weight",
            &[3, 2],
            0,
            &f32_bytes(&[0., 1., 2., 3., 4., 5.]),
        )
        .tensor("blk.0.attn_q.bias", &[2], 1, &[0x00, 0x3C, 0x00, 0xC0])
        .tensor(
            "blk.0.attn_k.weight",
            &[32, 1],
            8,
            &[&[0x00, 0x38][..], &[2; 32]].concat(),
        )
        .tensor("rope_freqs.weight", &[1], 0, &f32_bytes(&[9.0]))
}

/// The error message of opening `bytes`; panics if it opens.
pub(super) fn err_of(bytes: Vec<u8>) -> String {
    match GgufFile::from_bytes(bytes) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

/// llama.cpp's `LlamaModel.permute`, written out by index: within each head, row
/// `t * dim + i` of the Hugging Face tensor becomes row `2 * i + t`.
pub(super) fn llama_cpp_permute(w: &[f32], rows: usize, heads: usize) -> Vec<f32> {
    let (cols, dim) = (w.len() / rows, rows / heads / 2);
    let mut out = vec![0.0; w.len()];
    for h in 0..heads {
        for t in 0..2 {
            for i in 0..dim {
                let (src, dst) = (h * 2 * dim + t * dim + i, h * 2 * dim + 2 * i + t);
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}
