// `sd3tune tokenize --model DIR [--max-sequence-length N] [--no-pad] TEXT`: the token ids SD3 feeds its three
// text encoders for TEXT, as JSON {"clip_l": [...], "clip_g": [...], "t5": [...]} (CLIP padded to 77, T5 to N).
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "text/clip_tokenizer.h"
#include "text/t5_tokenizer.h"
#include "tools/commands.h"

namespace sd3::tools {

namespace {

struct TokenizeOptions {
    std::string model;
    std::string text;
    int max_sequence_length = 256;  // diffusers' StableDiffusion3Pipeline default (research doc 1.9)
    bool no_pad = false;
};

Status run_tokenize(const TokenizeOptions& opt) {
    namespace fs = std::filesystem;
    if (opt.max_sequence_length < 1 || opt.max_sequence_length > 512)
        return make_error(ErrorCode::INVALID_ARGUMENT, "--max-sequence-length ", opt.max_sequence_length,
                          " is out of range: use 1..512 (SD3 pipelines reject more than 512 T5 tokens)");
    if (!fs::is_directory(opt.model))
        return make_error(ErrorCode::NOT_FOUND, opt.model, ": no such model folder (expected a diffusers SD3 folder "
                          "with tokenizer/, tokenizer_2/ and tokenizer_3/)");
    const fs::path root(opt.model);
    SD3_ASSIGN_OR_RETURN(ClipTokenizer clip_l, ClipTokenizer::load((root / "tokenizer").string()));
    SD3_ASSIGN_OR_RETURN(ClipTokenizer clip_g, ClipTokenizer::load((root / "tokenizer_2").string()));
    SD3_ASSIGN_OR_RETURN(T5Tokenizer t5, T5Tokenizer::load((root / "tokenizer_3").string()));
    const bool pad = !opt.no_pad;
    const nlohmann::json l = clip_l.encode(opt.text, pad).ids;
    const nlohmann::json g = clip_g.encode(opt.text, pad).ids;
    const nlohmann::json t = t5.encode(opt.text, opt.max_sequence_length, pad).ids;
    std::printf("{\n  \"clip_l\": %s,\n  \"clip_g\": %s,\n  \"t5\": %s\n}\n", l.dump().c_str(), g.dump().c_str(),
                t.dump().c_str());
    return {};
}

std::pair<CLI::App*, CommandRunner> setup_tokenize(CLI::App& app) {
    auto opt = std::make_shared<TokenizeOptions>();
    CLI::App* sub = app.add_subcommand("tokenize", "Print the CLIP-L, CLIP-G and T5 token ids of a prompt as JSON");
    sub->add_option("--model", opt->model, "diffusers SD3 pipeline folder (holds tokenizer/, tokenizer_2/, tokenizer_3/)")
        ->required();
    sub->add_option("--max-sequence-length", opt->max_sequence_length,
                    "T5 length: truncate and pad to this many tokens, eos included (256 for generation, 77 for training)");
    sub->add_flag("--no-pad", opt->no_pad, "do not pad (sequences are still truncated)");
    sub->add_option("text", opt->text, "the prompt (any bytes; invalid UTF-8 becomes U+FFFD)")->required();
    return {sub, [opt]() -> Status { return run_tokenize(*opt); }};
}

SD3_COMMAND(80, setup_tokenize);

}  // namespace

}  // namespace sd3::tools
