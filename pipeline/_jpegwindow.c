/*
 * pipeline._jpegwindow: decode only a window of a JPEG, with libjpeg-turbo's partial decompression.
 *
 * decode(data, top, left, bottom, right, denom) -> (pixels, top, left, height, width)
 *
 * The window [top, bottom) x [left, right) is given in pixels of the image scaled by 1/denom
 * (denom 1, 2, 4 or 8: DCT-domain scaling). Rows above the window are skipped
 * (jpeg_skip_scanlines: entropy-decoded, not transformed), rows below it are never decoded,
 * and columns are cut to the iMCU columns that cover it (jpeg_crop_scanline). The returned
 * region holds the window and may be a little wider: `pixels` is height x width x 3 RGB bytes,
 * its top-left corner at (top, left) of the scaled image. Decoding uses libjpeg-turbo's defaults
 * (accurate integer IDCT, smooth chroma upsampling), and the region's pixels are those of a full
 * decode: smooth upsampling of subsampled chroma needs the column beyond each side of a cut,
 * so one more column is decoded on each side and dropped.
 *
 * The GIL is released while decoding. Errors raise ValueError with libjpeg's message.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <setjmp.h>
#include <stdio.h>
#include <string.h>

#include <jpeglib.h>

struct error_state {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
    char message[JMSG_LENGTH_MAX];
};

static void on_error(j_common_ptr cinfo) {
    struct error_state *err = (struct error_state *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, err->message);
    longjmp(err->jump, 1);
}

static void on_message(j_common_ptr cinfo) { (void)cinfo; /* warnings: not printed */ }

static PyObject *decode(PyObject *self, PyObject *args) {
    Py_buffer data;
    long top, left, bottom, right;
    int denom;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*lllli", &data, &top, &left, &bottom, &right, &denom))
        return NULL;
    if (denom != 1 && denom != 2 && denom != 4 && denom != 8) {
        PyBuffer_Release(&data);
        PyErr_SetString(PyExc_ValueError, "denom must be 1, 2, 4 or 8");
        return NULL;
    }

    struct jpeg_decompress_struct cinfo;
    struct error_state err;
    memset(&cinfo, 0, sizeof(cinfo));
    memset(&err, 0, sizeof(err));
    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = on_error;
    err.pub.output_message = on_message;

    PyObject *pixels = NULL;
    /* volatile: read after a longjmp */
    volatile int created = 0;
    volatile int failed = 0;
    volatile int bad_window = 0;
    JDIMENSION x = 0, width = 0, height = 0, y = 0, image_width = 0;
    unsigned char *out = NULL;

    Py_BEGIN_ALLOW_THREADS
    if (setjmp(err.jump)) {
        failed = 1;
    } else {
        jpeg_create_decompress(&cinfo);
        created = 1;
        jpeg_mem_src(&cinfo, (const unsigned char *)data.buf, (unsigned long)data.len);
        jpeg_read_header(&cinfo, TRUE);
        cinfo.out_color_space = JCS_RGB;
        cinfo.scale_num = 1;
        cinfo.scale_denom = (unsigned int)denom;
        jpeg_start_decompress(&cinfo);
        long w = (long)cinfo.output_width, h = (long)cinfo.output_height;
        image_width = cinfo.output_width; /* jpeg_crop_scanline narrows output_width to the cut */
        if (top < 0) top = 0;
        if (left < 0) left = 0;
        if (bottom > h) bottom = h;
        if (right > w) right = w;
        if (top >= bottom || left >= right) {
            bad_window = 1;
        } else {
            /* one column more on each side: upsampled chroma at a cut's edge is not a full decode's */
            x = (JDIMENSION)(left > 0 ? left - 1 : 0);
            width = (JDIMENSION)((right < w ? right + 1 : w) - (long)x);
            if (x != 0 || width != cinfo.output_width)
                jpeg_crop_scanline(&cinfo, &x, &width); /* moves x left to an iMCU column, widens */
            y = (JDIMENSION)top;
            height = (JDIMENSION)(bottom - top);
            if (y > 0)
                jpeg_skip_scanlines(&cinfo, y);
        }
    }
    Py_END_ALLOW_THREADS

    if (!failed && !bad_window) {
        pixels = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)height * width * 3);
        if (pixels != NULL) {
            out = (unsigned char *)PyBytes_AS_STRING(pixels);
            Py_BEGIN_ALLOW_THREADS
            if (setjmp(err.jump)) {
                failed = 1;
            } else {
                while (cinfo.output_scanline < y + height) {
                    JSAMPROW row = out + (size_t)(cinfo.output_scanline - y) * width * 3;
                    jpeg_read_scanlines(&cinfo, &row, 1);
                }
            }
            Py_END_ALLOW_THREADS
        }
    }
    if (created)
        jpeg_destroy_decompress(&cinfo); /* also abandons the rows below the window */
    if (!failed && !bad_window && pixels != NULL) {
        /* drop the edge columns decoded for context (kept at the image's own edges) */
        JDIMENSION cut_left = x > 0 ? 1 : 0, cut_right = x + width < image_width ? 1 : 0;
        if (cut_left || cut_right) {
            JDIMENSION kept = width - cut_left - cut_right;
            for (JDIMENSION r = 0; r < height; r++)
                memmove(out + (size_t)r * kept * 3, out + ((size_t)r * width + cut_left) * 3, (size_t)kept * 3);
            if (_PyBytes_Resize(&pixels, (Py_ssize_t)height * kept * 3) < 0) {
                PyBuffer_Release(&data);
                return NULL;
            }
            x += cut_left;
            width = kept;
        }
    }
    PyBuffer_Release(&data);

    if (failed) {
        Py_XDECREF(pixels);
        PyErr_Format(PyExc_ValueError, "JPEG decode failed: %s", err.message);
        return NULL;
    }
    if (bad_window) {
        PyErr_SetString(PyExc_ValueError, "the window lies outside the image");
        return NULL;
    }
    if (pixels == NULL)
        return NULL;
    return Py_BuildValue("(Nkkkk)", pixels, (unsigned long)y, (unsigned long)x, (unsigned long)height,
                         (unsigned long)width);
}

static PyMethodDef methods[] = {
    {"decode", decode, METH_VARARGS,
     "decode(data, top, left, bottom, right, denom) -> (pixels, top, left, height, width): the RGB pixels of "
     "a window of a JPEG scaled by 1/denom (see the module's source for the details)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_jpegwindow", "Partial JPEG decoding with libjpeg-turbo.", -1, methods,
};

PyMODINIT_FUNC PyInit__jpegwindow(void) { return PyModule_Create(&module); }
