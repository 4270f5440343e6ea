// SPDX-License-Identifier: MIT
// The per-context event-data arena ("vmtable", AEM-3.4.1/3.4.2): a buddy
// allocator over one MAP_SHARED anonymous mapping. Event data (socket reads)
// lives here, so a child created by the PROCESS executor sees it at the same
// address without a copy, and the application never allocates or frees it.
//
// Not thread-safe: the engine calls it under its context lock.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace aem::detail {

class Arena {
 public:
  // bytes is rounded up to a power of two >= kMinBlock.
  explicit Arena(size_t bytes);
  ~Arena();
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;

  bool ok() const { return base_ != nullptr; }
  void* alloc(size_t len);  // nullptr when no block is free
  void release(void* p);
  bool owns(const void* p) const;
  size_t in_use() const { return in_use_; }
  size_t capacity() const { return size_t{1} << max_order_; }

  static constexpr unsigned kMinOrder = 6;  // 64-byte blocks
  static constexpr size_t kMinBlock = size_t{1} << kMinOrder;

 private:
  struct FreeBlock {
    FreeBlock* next;
    FreeBlock* prev;
  };
  // Per minimum block: kFree | order on a free block's first minimum block,
  // order alone on an allocated block's first minimum block.
  static constexpr uint8_t kFree = 0x80;

  size_t index(const void* p) const;
  void push(unsigned order, FreeBlock* b);
  void unlink(unsigned order, FreeBlock* b);

  unsigned char* base_ = nullptr;
  unsigned max_order_ = 0;
  std::vector<FreeBlock*> free_;  // free list heads by order
  std::vector<uint8_t> tag_;      // by minimum-block index
  size_t in_use_ = 0;
};

}  // namespace aem::detail
