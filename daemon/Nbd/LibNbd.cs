using System.Runtime.InteropServices;

namespace DirBackup.Nbd;

/// <summary>P/Invoke declarations for Debian's libnbd0 (libnbd.so.0, 1.14): only what the copy engine uses.</summary>
internal static unsafe partial class LibNbd
{
    private const string Lib = "libnbd.so.0";

    public const uint CmdFlagNoHole = 0x02;
    public const uint ShutdownAbandonPending = 0x10000;

    [StructLayout(LayoutKind.Sequential)]
    public struct ExtentCallback
    {
        public delegate* unmanaged<void*, byte*, ulong, uint*, nuint, int*, int> Callback;
        public void* UserData;
        public delegate* unmanaged<void*, void> Free;
    }

    [StructLayout(LayoutKind.Sequential)]
    public struct CompletionCallback
    {
        public delegate* unmanaged<void*, int*, int> Callback;
        public void* UserData;
        public delegate* unmanaged<void*, void> Free;
    }

    [LibraryImport(Lib)] public static partial long nbd_aio_pread(nint h, void* buf, nuint count, ulong offset, CompletionCallback completion, uint flags);
    [LibraryImport(Lib)] public static partial long nbd_aio_pwrite(nint h, void* buf, nuint count, ulong offset, CompletionCallback completion, uint flags);
    [LibraryImport(Lib)] public static partial long nbd_aio_zero(nint h, ulong count, ulong offset, CompletionCallback completion, uint flags);
    [LibraryImport(Lib)] public static partial long nbd_aio_trim(nint h, ulong count, ulong offset, CompletionCallback completion, uint flags);
    [LibraryImport(Lib)] public static partial int nbd_aio_command_completed(nint h, ulong cookie);
    [LibraryImport(Lib)] public static partial int nbd_poll(nint h, int timeout);
    [LibraryImport(Lib)] public static partial int nbd_aio_get_fd(nint h);

    [LibraryImport(Lib)] public static partial int nbd_set_pread_initialize(nint h, [MarshalAs(UnmanagedType.U1)] bool request);
    [LibraryImport(Lib)] public static partial nint nbd_create();
    [LibraryImport(Lib)] public static partial void nbd_close(nint h);
    [LibraryImport(Lib)] public static partial nint nbd_get_error();
    [LibraryImport(Lib)] public static partial int nbd_get_errno();
    [LibraryImport(Lib, StringMarshalling = StringMarshalling.Utf8)] public static partial int nbd_set_export_name(nint h, string name);
    [LibraryImport(Lib, StringMarshalling = StringMarshalling.Utf8)] public static partial int nbd_set_handle_name(nint h, string name);
    [LibraryImport(Lib, StringMarshalling = StringMarshalling.Utf8)] public static partial int nbd_add_meta_context(nint h, string name);
    [LibraryImport(Lib, StringMarshalling = StringMarshalling.Utf8)] public static partial int nbd_connect_unix(nint h, string socketPath);
    [LibraryImport(Lib, StringMarshalling = StringMarshalling.Utf8)] public static partial int nbd_can_meta_context(nint h, string name);
    [LibraryImport(Lib)] public static partial long nbd_get_size(nint h);
    [LibraryImport(Lib)] public static partial int nbd_is_read_only(nint h);
    [LibraryImport(Lib)] public static partial int nbd_can_trim(nint h);
    [LibraryImport(Lib)] public static partial int nbd_can_zero(nint h);
    [LibraryImport(Lib)] public static partial int nbd_can_flush(nint h);
    [LibraryImport(Lib)] public static partial int nbd_pread(nint h, void* buf, nuint count, ulong offset, uint flags);
    [LibraryImport(Lib)] public static partial int nbd_pwrite(nint h, void* buf, nuint count, ulong offset, uint flags);
    [LibraryImport(Lib)] public static partial int nbd_zero(nint h, ulong count, ulong offset, uint flags);
    [LibraryImport(Lib)] public static partial int nbd_flush(nint h, uint flags);
    [LibraryImport(Lib)] public static partial int nbd_shutdown(nint h, uint flags);
    [LibraryImport(Lib)] public static partial int nbd_block_status(nint h, ulong count, ulong offset, ExtentCallback callback, uint flags);

    public static string LastError()
    {
        var message = Marshal.PtrToStringUTF8(nbd_get_error());
        return string.IsNullOrEmpty(message) ? "unknown libnbd error" : message;
    }
}
