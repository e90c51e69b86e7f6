#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "text.h"

namespace rstwatch {
namespace {

TEST(Text, TrimRemovesWhitespaceAtBothEnds) {
    EXPECT_EQ(trim(" \t token\r\n"), "token");
    EXPECT_EQ(trim("a b"), "a b");
    EXPECT_EQ(trim(" \n\v\f"), "");
    EXPECT_EQ(trim(""), "");
}

TEST(Text, OneLineReplacesControlCharacters) {
    EXPECT_EQ(one_line("first\nsecond\r\tthird"), "first second  third");
    EXPECT_EQ(one_line(std::string("nul\0byte", 8)), "nul byte");
    EXPECT_EQ(one_line("del\x7f"), "del");  // trailing spaces (here the DEL) go
    EXPECT_EQ(one_line("message\n"), "message");
}

TEST(Text, OneLineCutsAndMarksLongText) {
    EXPECT_EQ(one_line("abcdef", 3), "abc...");
    EXPECT_EQ(one_line("abc", 3), "abc");
    EXPECT_EQ(one_line(std::string(1000, 'x'), 200).size(), 203u);
}

class SmallFile : public ::testing::Test {
protected:
    void SetUp() override {
        dir_ = std::filesystem::temp_directory_path() / ("rstwatch-text-" + std::to_string(::getpid()));
        std::filesystem::create_directories(dir_);
    }
    void TearDown() override { std::filesystem::remove_all(dir_); }
    std::string write(const std::string& name, const std::string& content) {
        std::string path = (dir_ / name).string();
        std::ofstream(path, std::ios::binary) << content;
        return path;
    }
    std::filesystem::path dir_;
};

TEST_F(SmallFile, ReadsWholeFile) {
    std::string why;
    auto data = read_small_file(write("token", "secret\n"), 1024, &why);
    ASSERT_TRUE(data) << why;
    EXPECT_EQ(*data, "secret\n");
}

TEST_F(SmallFile, ExactlyAtTheLimitIsRead) {
    std::string why;
    auto data = read_small_file(write("limit", std::string(2048, 'a')), 2048, &why);
    ASSERT_TRUE(data) << why;
    EXPECT_EQ(data->size(), 2048u);
}

TEST_F(SmallFile, NamesTheProblemWithoutThePath) {
    std::string why;
    EXPECT_FALSE(read_small_file((dir_ / "missing").string(), 1024, &why));
    EXPECT_EQ(why, "No such file or directory");
    EXPECT_FALSE(read_small_file(write("big", std::string(5000, 'a')), 4096, &why));
    EXPECT_EQ(why, "larger than 4 KiB");
    EXPECT_FALSE(read_small_file(write("big2", std::string(200, 'a')), 100, &why));
    EXPECT_EQ(why, "larger than 100 bytes");
    EXPECT_FALSE(read_small_file(dir_.string(), 1024, &why));
    EXPECT_EQ(why, "Is a directory");
}

}  // namespace
}  // namespace rstwatch
