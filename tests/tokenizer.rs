//! The CLIP BPE tokenizer against transformers' CLIPTokenizer ids on awkward
//! prompts (fixture made by tools/golden/make_tokenizer_fixture.py).
use std::path::Path;

use fsd3d::models::tokenizer::PromptTokenizer;

fn fixture() -> serde_json::Value {
    let text = std::fs::read_to_string("tests/fixtures/clip_tokenizer/ids.json").unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn clip_bpe_matches_transformers_sd1_and_sd2() {
    let fx = fixture();
    let prompts: Vec<String> = serde_json::from_value(fx["prompts"].clone()).unwrap();
    for cfg in ["sd1", "sd2"] {
        let tok = PromptTokenizer::from_dir(Path::new(&format!("tests/fixtures/clip_tokenizer/{cfg}"))).unwrap();
        let want: Vec<Vec<u32>> = serde_json::from_value(fx[cfg].clone()).unwrap();
        for (p, w) in prompts.iter().zip(&want) {
            let got = tok.encode(p).unwrap();
            assert_eq!(&got, w, "{cfg}: prompt {p:?}");
        }
    }
}

#[test]
fn pad_token_comes_from_the_folder_config() {
    let sd1 = PromptTokenizer::from_dir(Path::new("tests/fixtures/clip_tokenizer/sd1")).unwrap();
    let sd2 = PromptTokenizer::from_dir(Path::new("tests/fixtures/clip_tokenizer/sd2")).unwrap();
    assert_ne!(sd1.pad_id(), sd2.pad_id());
    assert_eq!(sd1.max_length(), 77);
    let ids = sd2.encode("").unwrap();
    assert_eq!(ids.len(), 77);
    assert!(ids[2..].iter().all(|&i| i == sd2.pad_id()));
}

#[test]
fn a_folder_without_a_tokenizer_is_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("fsd3d-notok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let err = PromptTokenizer::from_dir(&dir).err().unwrap().to_string();
    assert!(err.contains("vocab.json") && err.contains("tokenizer.json"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// The embedded CLIP vocabulary (for single-file checkpoints) against
/// transformers' CLIPTokenizer and open_clip.tokenize on the real 49 408-token
/// vocabulary (tests/fixtures/clip_tokenizer/full_vocab_ids.json, made by
/// tools/golden/make_clip_bpe_fixture.py).
#[test]
fn embedded_clip_vocabulary_matches_transformers_and_open_clip() {
    use fsd3d::models::tokenizer::{ClipPadding, CLIP_VOCAB_SIZE};
    let text = std::fs::read_to_string("tests/fixtures/clip_tokenizer/full_vocab_ids.json").unwrap();
    let fx: serde_json::Value = serde_json::from_str(&text).unwrap();
    let prompts: Vec<String> = serde_json::from_value(fx["prompts"].clone()).unwrap();
    for (padding, reference) in [(ClipPadding::EndOfText, "sd1"), (ClipPadding::Zero, "open_clip")] {
        let tok = PromptTokenizer::clip(padding).unwrap();
        assert_eq!(tok.vocab_size(), CLIP_VOCAB_SIZE);
        let want: Vec<Vec<u32>> = serde_json::from_value(fx[reference].clone()).unwrap();
        assert_eq!(want.len(), prompts.len());
        for (p, w) in prompts.iter().zip(&want) {
            assert_eq!(&tok.encode(p).unwrap(), w, "{padding:?} against {reference}: prompt {p:?}");
        }
    }
    // OpenCLIP pads with id 0 ("!"), SD 1.x's CLIP with <|endoftext|> (49407).
    assert_eq!(PromptTokenizer::clip(ClipPadding::Zero).unwrap().pad_id(), 0);
    assert_eq!(PromptTokenizer::clip(ClipPadding::EndOfText).unwrap().pad_id(), 49407);
}
