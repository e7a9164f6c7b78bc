//! Prompt -> token ids, as diffusers' pipelines tokenize: padded and
//! truncated to the model's maximum length (77 for CLIP), BOS/EOS added.
//!
//! Two folder layouts are read:
//! - `vocab.json` + `merges.txt`: CLIP's byte-level BPE, built here the way
//!   transformers' `CLIPTokenizer` builds it (NFC, whitespace folded to one
//!   space, lower case; CLIP's split pattern; byte-level alphabet; `</w>` word
//!   ends; BOS ... EOS).
//! - `tokenizer.json`: a tokenizer serialised by the `tokenizers` library, used as is.
//!
//! Special tokens (pad, BOS, EOS, unknown) and the maximum length come from
//! `tokenizer_config.json` / `special_tokens_map.json` where present: SD 2.x
//! pads with "!", SD 1.x with the end-of-text token.
use std::path::{Path, PathBuf};

use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::normalizers::{Lowercase, NFC, Replace, Sequence as NormSeq};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSeq;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::{AddedToken, PaddingParams, PaddingStrategy, SplitDelimiterBehavior, Tokenizer, TruncationParams};

use crate::error::{Error, Result};

/// CLIP's pre-tokenisation pattern (the pieces BPE runs on).
const CLIP_PATTERN: &str = r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// The special tokens and length a tokenizer folder declares.
#[derive(Clone, Debug)]
pub struct SpecialTokens {
    pub bos: String,
    pub eos: String,
    pub pad: String,
    pub unk: String,
    pub max_length: usize,
}

impl Default for SpecialTokens {
    fn default() -> Self {
        SpecialTokens {
            bos: "<|startoftext|>".into(),
            eos: "<|endoftext|>".into(),
            pad: "<|endoftext|>".into(),
            unk: "<|endoftext|>".into(),
            max_length: 77,
        }
    }
}

fn token_field(v: &serde_json::Value, key: &str) -> Option<String> {
    match v.get(key)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(String::from),
        _ => None,
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::Io { path: path.to_path_buf(), cause: e })?;
    serde_json::from_str(&text).map_err(|e| Error::Invalid(format!("{}: not valid JSON: {e}", path.display())))
}

impl SpecialTokens {
    /// Reads `special_tokens_map.json` then `tokenizer_config.json` (which wins).
    pub fn from_dir(dir: &Path) -> Result<SpecialTokens> {
        let mut s = SpecialTokens::default();
        for name in ["special_tokens_map.json", "tokenizer_config.json"] {
            let p = dir.join(name);
            if !p.is_file() {
                continue;
            }
            let v = read_json(&p)?;
            if let Some(t) = token_field(&v, "bos_token") {
                s.bos = t;
            }
            if let Some(t) = token_field(&v, "eos_token") {
                s.eos = t;
            }
            if let Some(t) = token_field(&v, "pad_token") {
                s.pad = t;
            }
            if let Some(t) = token_field(&v, "unk_token") {
                s.unk = t;
            }
            // Some configs carry a huge sentinel for "no limit": keep 77 then.
            if let Some(n) = v.get("model_max_length").and_then(|m| m.as_f64()) {
                if n >= 1.0 && n < 1e6 {
                    s.max_length = n as usize;
                }
            }
        }
        Ok(s)
    }
}

/// A prompt tokenizer that pads and truncates like diffusers' pipelines do.
pub struct PromptTokenizer {
    inner: Tokenizer,
    special: SpecialTokens,
    pad_id: u32,
    source: PathBuf,
}

fn tok_err(dir: &Path, e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("tokenizer in {}: {e}", dir.display()))
}

/// Runs `f`, turning a panic into an error naming the tokenizer folder: the
/// tokenizers crate panics on some malformed or inconsistent files instead
/// of returning an error.
fn without_panics<T>(dir: &Path, f: impl FnOnce() -> T) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| {
        let what = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
        tok_err(dir, format!("the tokenizer files are malformed or inconsistent ({}); fetch them again", what.unwrap_or_default()))
    })
}

impl PromptTokenizer {
    /// Loads from a tokenizer folder (`tokenizer/` of a pipeline) or a pipeline folder.
    pub fn from_dir(dir: &Path) -> Result<PromptTokenizer> {
        let dir = if dir.join("tokenizer").is_dir() { dir.join("tokenizer") } else { dir.to_path_buf() };
        let special = SpecialTokens::from_dir(&dir)?;
        let (vocab, merges, json) = (dir.join("vocab.json"), dir.join("merges.txt"), dir.join("tokenizer.json"));
        let inner = if vocab.is_file() && merges.is_file() {
            without_panics(&dir, || clip_bpe(&vocab, &merges, &special))?.map_err(|e| tok_err(&dir, e))?
        } else if json.is_file() {
            without_panics(&dir, || Tokenizer::from_file(&json))?.map_err(|e| tok_err(&dir, e))?
        } else {
            return Err(Error::Invalid(format!(
                "no tokenizer in {}: expected vocab.json + merges.txt (CLIP BPE) or tokenizer.json",
                dir.display()
            )));
        };
        Self::padded(inner, special, dir)
    }

    /// Pads and truncates `inner` to the maximum length, and tries it once.
    fn padded(mut inner: Tokenizer, special: SpecialTokens, dir: PathBuf) -> Result<PromptTokenizer> {
        let pad_id = inner.token_to_id(&special.pad).ok_or_else(|| {
            tok_err(&dir, format!("pad token {:?} is not in the vocabulary", special.pad))
        })?;
        inner
            .with_truncation(Some(TruncationParams { max_length: special.max_length, ..Default::default() }))
            .map_err(|e| tok_err(&dir, e))?;
        inner.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(special.max_length),
            pad_id,
            pad_token: special.pad.clone(),
            ..Default::default()
        }));
        let tokenizer = PromptTokenizer { inner, special, pad_id, source: dir };
        // Some inconsistent tokenizer.json files (a post-processor naming a
        // token the vocabulary lacks, say) load but fail on the first prompt:
        // find out now, while the error can still name the file.
        tokenizer.encode("a photo, front view")?;
        Ok(tokenizer)
    }

    /// CLIP's own BPE vocabulary (embedded), for a checkpoint that holds no
    /// tokenizer: the tokenizer of every Stable Diffusion 1.x / 2.x and
    /// MVDream text encoder, padded as `padding` says.
    pub fn clip(padding: ClipPadding) -> Result<PromptTokenizer> {
        let source = PathBuf::from("<embedded CLIP BPE vocabulary>");
        let mut special = SpecialTokens::default();
        if padding == ClipPadding::Zero {
            special.pad = "!".into();
        }
        let (vocab, merges) = clip_vocabulary();
        let inner = clip_bpe_from(vocab, merges, &special, padding == ClipPadding::EndOfText).map_err(|e| tok_err(&source, e))?;
        Self::padded(inner, special, source)
    }

    /// Token ids of `prompt`, exactly `max_length` of them.
    pub fn encode(&self, prompt: &str) -> Result<Vec<u32>> {
        let enc = without_panics(&self.source, || self.inner.encode(prompt, true))?.map_err(|e| tok_err(&self.source, e))?;
        let ids = enc.get_ids().to_vec();
        if ids.len() != self.special.max_length {
            return Err(tok_err(&self.source, format!("encoded {} ids, expected {}", ids.len(), self.special.max_length)));
        }
        Ok(ids)
    }

    pub fn encode_batch(&self, prompts: &[&str]) -> Result<Vec<Vec<u32>>> {
        prompts.iter().map(|p| self.encode(p)).collect()
    }

    pub fn max_length(&self) -> usize {
        self.special.max_length
    }
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
    pub fn special(&self) -> &SpecialTokens {
        &self.special
    }
}

/// CLIP's byte-level BPE from a `vocab.json` + `merges.txt` folder, as
/// transformers' CLIPTokenizer reads it (the padding token is special).
fn clip_bpe(vocab: &Path, merges: &Path, special: &SpecialTokens) -> std::result::Result<Tokenizer, String> {
    let s = |p: &Path| p.to_str().map(String::from).ok_or_else(|| format!("path {} is not UTF-8", p.display()));
    let (v, m) = BPE::read_file(&s(vocab)?, &s(merges)?).map_err(|e| e.to_string())?;
    clip_bpe_from(v, m, special, true)
}

/// CLIP's byte-level BPE, assembled as transformers' CLIPTokenizer does.
/// With `pad_is_special` the padding token is never merged into words (what
/// transformers does: SD 2.x's tokenizer turns every "!" into its pad id);
/// without, it only pads (what open_clip does).
fn clip_bpe_from(v: Vocab, m: Merges, special: &SpecialTokens, pad_is_special: bool) -> std::result::Result<Tokenizer, String> {
    let bpe = BPE::builder()
        .vocab_and_merges(v, m)
        .continuing_subword_prefix(String::new())
        .end_of_word_suffix("</w>".into())
        .unk_token(special.unk.clone())
        .build()
        .map_err(|e| e.to_string())?;
    let mut t = Tokenizer::new(bpe);
    let replace = Replace::new(tokenizers::normalizers::replace::ReplacePattern::Regex(r"\s+".into()), " ")
        .map_err(|e| e.to_string())?;
    t.with_normalizer(Some(NormSeq::new(vec![NFC.into(), replace.into(), Lowercase.into()]))).map_err(|e| e.to_string())?;
    let split = Split::new(SplitPattern::Regex(CLIP_PATTERN.into()), SplitDelimiterBehavior::Removed, true)
        .map_err(|e| e.to_string())?;
    t.with_pre_tokenizer(Some(PreSeq::new(vec![split.into(), ByteLevel::new(false, true, true).into()])));
    let id = |tok: &str| t.token_to_id(tok).ok_or_else(|| format!("special token {tok:?} is not in vocab.json"));
    let (bos, eos) = (id(&special.bos)?, id(&special.eos)?);
    t.with_post_processor(Some(
        RobertaProcessing::new((special.eos.clone(), eos), (special.bos.clone(), bos)).trim_offsets(false).add_prefix_space(false),
    ));
    let mut specials = vec![special.bos.clone(), special.eos.clone(), special.unk.clone()];
    if pad_is_special {
        specials.push(special.pad.clone());
    }
    specials.dedup();
    let added: Vec<AddedToken> = specials.into_iter().map(|s| AddedToken::from(s, true)).collect();
    t.add_special_tokens(added).map_err(|e| e.to_string())?;
    Ok(t)
}

/// The merges of OpenAI CLIP's BPE (the first 48 894 lines of its
/// `bpe_simple_vocab_16e6.txt`, MIT licence: `assets/clip-bpe/LICENSE`),
/// embedded so that a single-file checkpoint, which holds no tokenizer,
/// needs no download.
const CLIP_MERGES: &str = include_str!("../../assets/clip-bpe/merges.txt");

/// GPT-2's byte-to-symbol table, which CLIP's BPE uses: the printable
/// Latin-1 bytes stand for themselves, the others for the code points from
/// 256 on, in byte order; the vocabulary lists them in this order.
fn byte_symbols() -> Vec<char> {
    let printable = |b: u32| (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
    let mut symbols: Vec<char> = (0..256u32).filter(|&b| printable(b)).filter_map(char::from_u32).collect();
    let others = (0..256u32).filter(|&b| !printable(b)).count() as u32;
    symbols.extend((256..256 + others).filter_map(char::from_u32));
    symbols
}

/// CLIP's 49 408-token vocabulary and its merges, built as CLIP's own
/// tokenizer builds them: the 256 byte symbols, the same with `</w>`, one
/// token per merge, then `<|startoftext|>` and `<|endoftext|>`.
fn clip_vocabulary() -> (Vocab, Merges) {
    let merges: Merges = CLIP_MERGES
        .lines()
        .filter(|l| !l.starts_with("#version"))
        .filter_map(|l| l.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())))
        .collect();
    let symbols = byte_symbols();
    let tokens = symbols
        .iter()
        .map(|c| c.to_string())
        .chain(symbols.iter().map(|c| format!("{c}</w>")))
        .chain(merges.iter().map(|(a, b)| format!("{a}{b}")))
        .chain(["<|startoftext|>".to_string(), "<|endoftext|>".to_string()]);
    let vocab: Vocab = tokens.enumerate().map(|(i, t)| (t, i as u32)).collect();
    (vocab, merges)
}

/// How a single-file checkpoint's text encoder pads its prompts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClipPadding {
    /// OpenAI CLIP (SD 1.x): with `<|endoftext|>`, as transformers' CLIPTokenizer.
    EndOfText,
    /// OpenCLIP (SD 2.x, MVDream): with id 0 ("!"), as `open_clip.tokenize`,
    /// where "!" in a prompt stays an ordinary token.
    Zero,
}

/// The number of tokens in CLIP's vocabulary.
pub const CLIP_VOCAB_SIZE: usize = 49408;
