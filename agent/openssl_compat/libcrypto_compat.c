/* Loaded by the agent as "libcrypto.so" (its SONAME): it only depends on libcrypto.so.3, so
 * civetweb's dlopen("libcrypto.so") works without the libssl-dev symlink (e.g. in the image). */
typedef int rstwatch_libcrypto_compat_is_a_dependency_only;
