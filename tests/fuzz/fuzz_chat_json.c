/*
 * fuzz_chat_json — a chat-completions request body (JSON) to an engine
 * request: chat_parse_json with two uploads a body may reference as
 * "upload:image" and "upload:b". An accepted request keeps to the limits and
 * holds only well-formed UTF-8 text; a refused one is a 4xx with a valid
 * OpenAI error body.
 */
#include "openai_props.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
    static const char png[] = "\x89PNG\r\n\x1a\n";
    chat_upload ups[2] = {
        { "image", 5, png, sizeof png - 1, 0 },
        { "b", 1, png, sizeof png - 1, 0 },
    };
    chat_req *cr = NULL;
    api_error e = { 0 };
    if (chat_parse_json((const char *)data, len, ups, 2, &FUZZ_LIMITS, &cr, &e) < 0) {
        check_api_error(&e);
        return 0;
    }
    check_chat_req(cr);
    chat_req_free(cr);
    return 0;
}
